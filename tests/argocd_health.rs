//! The Argo CD health check (gitops/argocd/locall.io/LocallRelease/health.lua) against its
//! health_test.yaml, in a Lua 5.1 VM as Argo CD runs it: every phase maps to the right status.

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gitops/argocd/locall.io/LocallRelease")
}

#[test]
fn every_phase_has_the_expected_argo_cd_health() {
    use mlua::{Lua, LuaSerdeExt};
    let script = std::fs::read_to_string(dir().join("health.lua")).unwrap();
    let tests: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(dir().join("health_test.yaml")).unwrap()).unwrap();
    let cases = tests["tests"].as_sequence().unwrap();
    assert!(cases.len() >= 6);
    let mut statuses = std::collections::BTreeSet::new();
    for case in cases {
        let input = case["inputPath"].as_str().unwrap();
        let obj: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(dir().join(input)).unwrap()).unwrap();
        let lua = Lua::new();
        lua.globals().set("obj", lua.to_value(&obj).unwrap()).unwrap();
        let hs: mlua::Table = lua.load(&script).eval().unwrap_or_else(|e| panic!("{input}: {e}"));
        let status: String = hs.get("status").unwrap();
        let message: String = hs.get("message").unwrap_or_default();
        assert_eq!(status, case["healthStatus"]["status"].as_str().unwrap(), "{input}");
        assert_eq!(message, case["healthStatus"]["message"].as_str().unwrap(), "{input}");
        statuses.insert(status);
    }
    assert_eq!(statuses.into_iter().collect::<Vec<_>>(), ["Degraded", "Healthy", "Progressing", "Suspended"]);
}
