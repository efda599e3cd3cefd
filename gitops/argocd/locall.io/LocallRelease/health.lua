-- Argo CD health for locall.io/LocallRelease.
-- Healthy once released (Ready=True), Suspended while waiting for an approval or paused,
-- Degraded when the release failed or was rolled back (Stalled=True), Progressing otherwise.
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the release"
  return hs
end
local st = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local function condition(kind)
  if st.conditions == nil then return nil end
  for _, c in ipairs(st.conditions) do
    if c.type == kind then return c end
  end
  return nil
end
local message = st.message or ""
local stalled = condition("Stalled")
local ready = condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (st.phase or "Failed") .. ": " .. message
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end
if st.phase == "AwaitingApproval" or st.paused == true then
  hs.status = "Suspended"
  hs.message = message
  return hs
end
hs.status = "Progressing"
hs.message = message
return hs
