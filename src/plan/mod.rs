//! `kubectl locall plan`: the release engine run on a manifest in simulated time against an
//! in-memory cluster, printing the timeline a user will live through. The same `decide` as the
//! operator: what it prints is what the operator will do, in the order it will do it.

pub mod world;

use crate::api::{LocallRelease, LocallReleaseSpec, LocallReleaseStatus, Phase};
use crate::engine::{decide, Release};
use anyhow::{anyhow, bail};
use chrono::{DateTime, TimeZone, Utc};
use kube::ResourceExt;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use world::{Behaviour, JobEnd, World};

/// Where to make the simulated release fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailAt {
    /// A Job fails: its hook name (`migrate`, `backup`, `tests`, a verification's name).
    Job(String),
    /// Every metric with a rollback trigger breaches it at this step (1-based) of this stage.
    Step { stage: String, step: u32 },
    /// ... or in this go-live window.
    Window(String),
}

impl std::str::FromStr for FailAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["job", name] if !name.is_empty() => Ok(FailAt::Job(name.to_string())),
            ["step", stage, n] => {
                let step = n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| format!("step number {n:?} is not 1 or more"))?;
                Ok(FailAt::Step { stage: stage.to_string(), step })
            }
            ["window", name] if !name.is_empty() => Ok(FailAt::Window(name.to_string())),
            _ => Err(format!("{s:?}: expected job:NAME, step:STAGE:N or window:NAME")),
        }
    }
}

/// How to run the plan.
#[derive(Clone, Debug)]
pub struct Options {
    /// Plan the very first release of the object (nothing to shift traffic from).
    pub first: bool,
    /// Where to make it fail, if anywhere.
    pub fail: Option<FailAt>,
    /// How long each Job runs.
    pub job_duration: Duration,
    /// How long a Deployment takes to become Ready.
    pub ready_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { first: false, fail: None, job_duration: Duration::from_secs(60), ready_after: Duration::from_secs(30) }
    }
}

/// One line of the timeline: an Event the operator emits, at its offset from the start.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: Duration,
    pub phase: Phase,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// The whole simulated release.
#[derive(Clone, Debug)]
pub struct Timeline {
    pub release: String,
    pub version: String,
    pub entries: Vec<Entry>,
    pub end: Phase,
    pub message: String,
    pub total: Duration,
    pub ticks: usize,
    pub status: LocallReleaseStatus,
}

/// Ticks after which a plan gives up (a release that never ends is reported, not looped on).
const MAX_TICKS: usize = 200_000;
/// Simulated time after which a plan gives up.
const MAX_TIME: chrono::TimeDelta = chrono::TimeDelta::days(60);

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap_or_default()
}

/// Runs the release in `lr` through the engine in simulated time.
pub fn plan(lr: &LocallRelease, opts: &Options) -> anyhow::Result<Timeline> {
    let name = lr.name_any();
    let namespace = lr.namespace().unwrap_or_else(|| "default".into());
    let spec = &lr.spec;
    let breach = Arc::new(AtomicBool::new(false));
    // Failures are the planned release's, not the previous version's.
    let armed = Arc::new(AtomicBool::new(false));
    let behaviour = behaviour(opts, breach.clone(), armed.clone());
    let mut world = World::new(&name, &namespace, start_time(), behaviour);
    let mut status = LocallReleaseStatus::default();
    if !opts.first {
        // A previous version serves traffic, as it does for every release but the first.
        let mut prev = spec.clone();
        prev.version = previous_version(&spec.version);
        let mut a = spec.approvals.clone();
        a.iter_mut().for_each(|x| x.version = prev.version.clone());
        prev.approvals = a;
        let t = run(&mut world, &name, &namespace, &prev, status, None, &breach)?;
        if t.end != Phase::Succeeded {
            bail!("the previous version could not be released in the simulation: {}", t.message);
        }
        status = t.status;
    }
    armed.store(true, Ordering::SeqCst);
    run(&mut world, &name, &namespace, spec, status, opts.fail.as_ref(), &breach)
}

fn previous_version(v: &str) -> String {
    let p = format!("{v}-previous");
    if p.len() <= 63 {
        p
    } else {
        "previous".into()
    }
}

fn behaviour(opts: &Options, breach: Arc<AtomicBool>, armed: Arc<AtomicBool>) -> Behaviour {
    let mut b = Behaviour::healthy(opts.job_duration, opts.ready_after);
    if let Some(FailAt::Job(name)) = opts.fail.clone() {
        let d = opts.job_duration;
        b.job = Box::new(move |j| {
            let fails = armed.load(Ordering::SeqCst) && j.record.name == name;
            (d, if fails { JobEnd::Fail } else { JobEnd::Succeed })
        });
    }
    b.measure = Box::new(move |m, _, _| {
        let value = match breach.load(Ordering::SeqCst).then(|| world::breaching_value(m)).flatten() {
            Some(v) => v,
            None => world::passing_value(m),
        };
        crate::engine::gates::Measurement { value: Some(value), sample: Some(1e6), error: None }
    });
    b
}

fn run(
    world: &mut World,
    name: &str,
    namespace: &str,
    spec: &LocallReleaseSpec,
    mut status: LocallReleaseStatus,
    fail: Option<&FailAt>,
    breach: &AtomicBool,
) -> anyhow::Result<Timeline> {
    let start = world.now;
    let mut entries = vec![];
    let method = spec.traffic.method;
    breach.store(false, Ordering::SeqCst);
    for tick in 0..MAX_TICKS {
        // The metric failure starts when the release reaches the chosen step or window.
        match fail {
            Some(FailAt::Step { stage, step }) => {
                let at = matches!(status.phase, Phase::Staging | Phase::Production) && &status.stage == stage && status.step + 1 == *step;
                if at && status.step_started_at.is_some() {
                    breach.store(true, Ordering::SeqCst);
                }
            }
            Some(FailAt::Window(w)) if status.phase == Phase::GoLive && &status.window == w => breach.store(true, Ordering::SeqCst),
            _ => {}
        }
        // The failure is the new version's: once traffic is back, the previous version is healthy.
        if status.phase == Phase::RollingBack {
            breach.store(false, Ordering::SeqCst);
        }
        let obs = world.observe(spec, &status, Some(1));
        let d = decide(Release { name, namespace, generation: Some(1), spec, status: &status }, &obs, world.now);
        let _ = world.apply(&d, method);
        let at = (world.now - start).to_std().unwrap_or_default();
        for e in &d.events {
            entries.push(Entry { at, phase: d.status.phase, warning: e.warning, reason: e.reason.clone(), message: e.message.clone() });
        }
        status = d.status.clone();
        if status.phase.is_terminal() || (d.desired.frozen && status.wait.as_ref().is_some_and(|w| w.until.is_none())) {
            return Ok(Timeline {
                release: format!("{namespace}/{name}"),
                version: spec.version.clone(),
                entries,
                end: status.phase,
                message: status.message.clone(),
                total: at,
                ticks: tick + 1,
                status,
            });
        }
        // As the controller requeues.
        let wait = d.next_look().unwrap_or(Duration::from_secs(60));
        let next = crate::engine::now_plus(world.now, wait);
        if next - start > MAX_TIME {
            return Err(anyhow!("no end after {} days of simulated time: {}", MAX_TIME.num_days(), status.message));
        }
        world.advance_to(next);
    }
    Err(anyhow!("no end after {MAX_TICKS} steps of the engine: {}", status.message))
}

/// `1d2h3m4s`, `250ms`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = (ms / 1000) as u64;
    let days = s / 86_400;
    s %= 86_400;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// The timeline as the plugin prints it; the last line is the outcome and the total time.
pub fn render(t: &Timeline) -> String {
    let mut out = format!("plan for {} {} (simulated; the operator's own engine)\n", t.release, t.version);
    for e in &t.entries {
        let mark = if e.warning { "!" } else { " " };
        out.push_str(&format!("{mark}+{:<12} {:<16} {:<20} {}\n", human(e.at), e.phase.as_str(), e.reason, e.message));
    }
    out.push_str(&format!("{} after {} of simulated time ({} engine steps): {}\n", t.end, human(t.total), t.ticks, t.message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_points_parse() {
        assert_eq!("job:migrate".parse::<FailAt>(), Ok(FailAt::Job("migrate".into())));
        assert_eq!("step:production:2".parse::<FailAt>(), Ok(FailAt::Step { stage: "production".into(), step: 2 }));
        assert_eq!("window:0-15m".parse::<FailAt>(), Ok(FailAt::Window("0-15m".into())));
        assert!("step:production:0".parse::<FailAt>().is_err());
        assert!("nonsense".parse::<FailAt>().is_err());
        assert_eq!(human(Duration::from_secs(90_061)), "1d1h1m1s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}
