//! `kubectl locall plan`: every LocallRelease in the repository (the examples and the README's
//! manifest) is run through the operator's engine in simulated time with its real durations,
//! 24 h go-live windows included, and ends Succeeded; a failure at a chosen step or window ends
//! in a verified rollback. No cluster needed.

use locall_operator::{api::LocallRelease, api::Phase, plan};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every LocallRelease document under examples/ and in the README's yaml blocks.
fn releases() -> Vec<(String, LocallRelease)> {
    let mut out = vec![];
    let mut files = vec![];
    let mut dirs = vec![repo().join("examples")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        out.extend(docs(&text).into_iter().map(|lr| (f.strip_prefix(repo()).unwrap().display().to_string(), lr)));
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for block in readme.split("```yaml").skip(1) {
        let yaml = block.split("```").next().unwrap_or_default();
        if yaml.contains("\nkind: LocallRelease") {
            out.extend(docs(yaml).into_iter().map(|lr| ("README.md".to_string(), lr)));
        }
    }
    out
}

fn docs(text: &str) -> Vec<LocallRelease> {
    use serde::Deserialize;
    let mut out = vec![];
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.get("kind").and_then(|k| k.as_str()) == Some("LocallRelease") {
            out.push(serde_yaml::from_value(v).expect("a LocallRelease"));
        }
    }
    out
}

#[test]
fn every_release_in_the_repository_succeeds_with_its_real_durations() {
    let all = releases();
    assert!(all.iter().any(|(f, _)| f == "README.md"), "the README's manifest is planned too");
    assert!(all.iter().any(|(f, _)| f == "examples/locall-api.yaml"));
    for (file, lr) in &all {
        let t = plan::plan(lr, &plan::Options::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        // The demo's failing examples fail by their pods' annotations, which the plan's healthy
        // cluster does not read: they too succeed here, as the engine would on a healthy cluster.
        assert_eq!(t.end, Phase::Succeeded, "{file}: {}\n{}", t.message, plan::render(&t));
        let pauses: u64 =
            lr.spec.stages.iter().flat_map(|s| s.steps.iter().filter_map(|p| p.pause.as_ref())).map(|p| p.get().as_secs()).sum();
        let windows: u64 = lr.spec.go_live.as_ref().map(|g| g.effective().iter().map(|w| w.duration.get().as_secs()).sum()).unwrap_or(0);
        assert!(
            t.total.as_secs() >= pauses + windows,
            "{file}: {}s is less than its pauses and windows ({pauses}s + {windows}s)",
            t.total.as_secs()
        );
    }
}

#[test]
fn the_example_plan_walks_every_step_and_its_24_hours_of_go_live() {
    let lr = releases().into_iter().find(|(f, _)| f == "examples/locall-api.yaml").unwrap().1;
    let t = plan::plan(&lr, &plan::Options::default()).unwrap();
    let text = plan::render(&t);
    let shifted = t.entries.iter().filter(|e| e.reason == "TrafficShifted").count();
    let steps: usize = lr.spec.stages.iter().map(|s| s.steps.len().max(1)).sum();
    assert_eq!(shifted, steps, "one TrafficShifted per step\n{text}");
    assert!(t.total >= std::time::Duration::from_secs(24 * 3600), "the go-live windows alone take 24 h\n{text}");
    assert!(text.lines().last().unwrap().starts_with("Succeeded after"), "{text}");
}

#[test]
fn a_failure_at_a_step_or_window_ends_in_a_verified_rollback() {
    let lr = releases().into_iter().find(|(f, _)| f == "examples/locall-api.yaml").unwrap().1;
    let production = lr.spec.stages.last().unwrap().name.clone();
    for fail in [format!("step:{production}:2"), "window:0-15m".to_string(), "job:migrate".to_string()] {
        let opts = plan::Options { fail: Some(fail.parse().unwrap()), ..Default::default() };
        let t = plan::plan(&lr, &opts).unwrap();
        let text = plan::render(&t);
        if fail.starts_with("job:") {
            assert_eq!(t.end, Phase::Failed, "{fail}: a failed migration stops before any traffic moves\n{text}");
            continue;
        }
        assert_eq!(t.end, Phase::RolledBack, "{fail}\n{text}");
        for reason in ["TrafficRestored", "DatabaseRestored", "RollbackVerified"] {
            assert!(t.entries.iter().any(|e| e.reason == reason), "{fail}: no {reason}\n{text}");
        }
    }
}

#[test]
fn the_plugin_prints_the_plan_and_exits_0() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-locall"))
        .args(["plan", "-f"])
        .arg(Path::new(&repo()).join("examples/locall-api.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("Succeeded after ") && last.contains("of simulated time"), "{last}");
    println!("{text}");
}
