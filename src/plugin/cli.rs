//! `kubectl-locall`: the command line, and the calls to the API server. The text it prints comes
//! from the pure functions in `tree`, `list` and `actions`.

use super::{actions, actions::Action, list, tree::render_tree};
use crate::api::{Dur, LocallRelease};
use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use std::{path::PathBuf, time::Duration};

/// Inspect and steer LocallReleases (kubectl plugin: `kubectl locall ...`).
#[derive(Parser, Debug)]
#[command(name = "kubectl-locall", bin_name = "kubectl locall", version, about)]
pub struct Cli {
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (`list`).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a release as a tree: stable version, preflight, Jobs, stages and steps, gates,
    /// go-live, approvals, failure and rollback.
    Get {
        name: String,
        /// Redraw whenever the release changes; exits when it is terminal for its current spec.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// List releases: NAME, VERSION, STABLE, PHASE, STAGE, WEIGHT, AGE.
    #[command(alias = "ls")]
    List,
    /// Wait until the release is terminal for its current spec and print one line. Exit code:
    /// 0 Succeeded, 1 RolledBack or Failed, 2 timeout or error.
    Status {
        name: String,
        /// How long to wait, e.g. 90s, 10m.
        #[arg(long, default_value = "10m")]
        timeout: Dur,
    },
    /// Approve a stage for the release's current version (annotation locall.io/approve).
    Approve {
        name: String,
        /// The stage (default: the stage the release is waiting in).
        #[arg(long)]
        stage: Option<String>,
        /// Who approves. Default: the caller's identity as the API server authenticates it
        /// (SelfSubjectReview), which is what the chart's approval policy requires.
        #[arg(long)]
        by: Option<String>,
    },
    /// Skip the current step's pause and gate hold (`--full`: straight to 100% and past go-live).
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Stop the release and roll back to the stable version.
    Abort {
        name: String,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Retry a Failed or RolledBack release.
    Retry {
        name: String,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Pause the release where it is.
    Pause {
        name: String,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Resume a paused release.
    Resume {
        name: String,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Roll back now: traffic to the stable version, the database restored if the schema changed.
    Rollback {
        name: String,
        /// Who asks (default: the caller, as the API server authenticates them).
        #[arg(long)]
        by: Option<String>,
    },
    /// Run the operator's engine on a manifest in simulated time, against an in-memory healthy
    /// cluster, and print the timeline: each Job, stage, step and window with its offset from
    /// the start, and the total time to Succeeded. Needs no cluster.
    Plan {
        /// The manifest (its LocallRelease documents are planned; other kinds are skipped).
        #[arg(short = 'f', long)]
        filename: PathBuf,
        /// Plan the very first release (by default a previous version is serving).
        #[arg(long)]
        first: bool,
        /// Make it fail: job:NAME, step:STAGE:N (metrics breach at that step) or window:NAME.
        #[arg(long)]
        fail_at: Option<crate::plan::FailAt>,
        /// How long each Job runs in the simulation.
        #[arg(long, default_value = "1m")]
        job_duration: Dur,
        /// How long a Deployment takes to become Ready in the simulation.
        #[arg(long, default_value = "30s")]
        ready_after: Dur,
    },
}

/// A failure with the exit code it should give.
struct Exit(i32, anyhow::Error);

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        Exit(1, e)
    }
}

/// Runs the plugin; returns the process exit code.
pub async fn main() -> i32 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(Exit(code, e)) => {
            eprintln!("error: {e:#}");
            code
        }
    }
}

/// The client, the namespace and the kubeconfig's user for the chosen context.
struct Target {
    client: Client,
    namespace: String,
    user: Option<String>,
}

async fn connect(cli: &Cli) -> anyhow::Result<Target> {
    let kc = match &cli.kubeconfig {
        Some(p) => Kubeconfig::read_from(p).with_context(|| format!("reading kubeconfig {}", p.display()))?,
        None => Kubeconfig::read().context("reading kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
    };
    let ctx_name = cli.context.clone().or_else(|| kc.current_context.clone());
    let ctx = ctx_name.as_ref().and_then(|n| kc.contexts.iter().find(|c| &c.name == n)).and_then(|c| c.context.clone());
    if let (Some(n), None) = (&cli.context, &ctx) {
        return Err(anyhow!("context {n:?} not found in kubeconfig"));
    }
    let namespace =
        cli.namespace.clone().or_else(|| ctx.as_ref().and_then(|c| c.namespace.clone())).unwrap_or_else(|| "default".to_string());
    let user = ctx.as_ref().and_then(|c| c.user.clone());
    let opts = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = Config::from_custom_kubeconfig(kc, &opts).await.context("loading kubeconfig")?;
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok(Target { client, namespace, user })
}

async fn fetch(api: &Api<LocallRelease>, ns: &str, name: &str) -> anyhow::Result<LocallRelease> {
    match api.get_opt(name).await {
        Ok(Some(lr)) => Ok(lr),
        Ok(None) => Err(anyhow!("locallrelease {ns}/{name} not found")),
        Err(e) => Err(anyhow!("getting locallrelease {ns}/{name}: {e}")),
    }
}

/// The caller's username as the API server authenticates it (SelfSubjectReview), if it says.
async fn whoami(client: &kube::Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api.create(&kube::api::PostParams::default(), &SelfSubjectReview::default()).await.ok()?;
    review.status?.user_info?.username.filter(|u| !u.is_empty())
}

/// Who signs an approval or a request (see [`actions::signer`]); asks the API server only when
/// `--by` is not given.
async fn who(by: Option<String>, t: &Target) -> String {
    let asked = by.filter(|b| !b.trim().is_empty());
    let authenticated = if asked.is_none() { whoami(&t.client).await } else { None };
    actions::signer(asked, authenticated, std::env::var("USER").ok(), t.user.clone())
}

/// `plan`: every LocallRelease in the file, one timeline each. Exit 0 when all end Succeeded
/// (or, with --fail-at, RolledBack or Failed as asked), 1 otherwise.
fn plan_file(path: &std::path::Path, opts: &crate::plan::Options) -> Result<i32, Exit> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
    let mut code = 0;
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if v.get("kind").and_then(|k| k.as_str()) != Some("LocallRelease") {
            continue;
        }
        found += 1;
        let lr: LocallRelease = serde_yaml::from_value(v).map_err(|e| anyhow!("{}: not a valid LocallRelease: {e}", path.display()))?;
        let t = crate::plan::plan(&lr, opts)?;
        print!("{}", crate::plan::render(&t));
        let expected = if opts.fail.is_some() { t.end.is_terminal() } else { t.end == crate::api::Phase::Succeeded };
        if !expected {
            code = 1;
        }
    }
    if found == 0 {
        return Err(Exit(1, anyhow!("{}: no LocallRelease in the file", path.display())));
    }
    Ok(code)
}

async fn run(cli: Cli) -> Result<i32, Exit> {
    if let Command::Plan { ref filename, first, ref fail_at, ref job_duration, ref ready_after } = cli.command {
        let opts = crate::plan::Options { first, fail: fail_at.clone(), job_duration: job_duration.get(), ready_after: ready_after.get() };
        return plan_file(filename, &opts);
    }
    let status_cmd = matches!(cli.command, Command::Status { .. });
    let t = connect(&cli).await.map_err(|e| Exit(if status_cmd { 2 } else { 1 }, e))?;
    let ns = t.namespace.clone();
    let api: Api<LocallRelease> = Api::namespaced(t.client.clone(), &ns);
    match cli.command {
        Command::Get { ref name, watch } => {
            let lr = fetch(&api, &ns, name).await?;
            if !watch {
                print!("{}", render_tree(&lr));
                return Ok(0);
            }
            watch_tree(&api, &ns, name, lr).await.map_err(Exit::from)
        }
        Command::List => {
            let lp = ListParams::default();
            let items = if cli.all_namespaces { Api::<LocallRelease>::all(t.client.clone()).list(&lp).await } else { api.list(&lp).await }
                .map_err(|e| anyhow!("listing locallreleases: {e}"))?;
            if items.items.is_empty() {
                if cli.all_namespaces {
                    eprintln!("No locallreleases found.");
                } else {
                    eprintln!("No locallreleases found in {ns} namespace.");
                }
                return Ok(0);
            }
            print!("{}", list::render_list(&items.items, cli.all_namespaces, chrono::Utc::now()));
            Ok(0)
        }
        Command::Status { ref name, timeout } => {
            let deadline = tokio::time::Instant::now() + timeout.get();
            loop {
                let lr = fetch(&api, &ns, name).await.map_err(|e| Exit(2, e))?;
                if let Some(phase) = list::terminal(&lr) {
                    println!("{}", list::status_line(&lr));
                    return Ok(list::exit_code(phase));
                }
                if tokio::time::Instant::now() >= deadline {
                    println!("{}", list::status_line(&lr));
                    return Err(Exit(2, anyhow!("timed out after {timeout} waiting for {ns}/{name} to finish")));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Command::Approve { ref name, ref stage, ref by } => {
            let lr = fetch(&api, &ns, name).await?;
            let stage = actions::approve_stage(&lr, stage.as_deref()).map_err(|e| anyhow!(e))?;
            let by = who(by.clone(), &t).await;
            let patch = actions::approve_patch(&stage, &lr.spec.version, &by);
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| anyhow!("annotating locallrelease {ns}/{name}: {e}"))?;
            println!("approved stage {stage} of {ns}/{name} {} by {by}", lr.spec.version);
            Ok(0)
        }
        Command::Promote { ref name, full, ref by } => {
            request(&api, &t, &ns, name, if full { Action::PromoteFull } else { Action::Promote }, by.clone()).await
        }
        Command::Abort { ref name, ref by } => request(&api, &t, &ns, name, Action::Abort, by.clone()).await,
        Command::Retry { ref name, ref by } => request(&api, &t, &ns, name, Action::Retry, by.clone()).await,
        Command::Pause { ref name, ref by } => request(&api, &t, &ns, name, Action::Pause, by.clone()).await,
        Command::Resume { ref name, ref by } => request(&api, &t, &ns, name, Action::Resume, by.clone()).await,
        Command::Rollback { ref name, ref by } => request(&api, &t, &ns, name, Action::Rollback, by.clone()).await,
        Command::Plan { .. } => Ok(0),
    }
}

async fn request(api: &Api<LocallRelease>, t: &Target, ns: &str, name: &str, action: Action, by: Option<String>) -> Result<i32, Exit> {
    let lr = fetch(api, ns, name).await?;
    let by = who(by, t).await;
    let id = actions::request_id(chrono::Utc::now().timestamp_millis(), rand::random::<u32>());
    let patch = actions::request_patch(action, &id, &by);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| anyhow!("annotating locallrelease {ns}/{name}: {e}"))?;
    println!("requested {} of {ns}/{name} {} by {by} (id {id})", action.as_str(), lr.spec.version);
    if let Some(why) = action.ignored_because(&lr) {
        eprintln!("warning: the operator will likely ignore it: {why}");
    }
    Ok(0)
}

/// `get -w`: polls every second, prints the tree under a timestamp whenever it changes, and
/// returns once the release is terminal for its current spec (or on Ctrl-C).
async fn watch_tree(api: &Api<LocallRelease>, ns: &str, name: &str, first: LocallRelease) -> anyhow::Result<i32> {
    let mut last = String::new();
    let mut lr = first;
    let mut failures = 0;
    loop {
        let text = render_tree(&lr);
        if text != last {
            println!("── {} ──", chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ"));
            print!("{text}");
            last = text;
        }
        if list::terminal(&lr).is_some() {
            return Ok(0);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match fetch(api, ns, name).await {
            Ok(next) => {
                lr = next;
                failures = 0;
            }
            Err(e) if e.to_string().ends_with("not found") => return Err(e),
            Err(e) => {
                failures += 1;
                eprintln!("warning: {e}");
                if failures >= 30 {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_kubectl() {
        let c = Cli::try_parse_from(["kubectl-locall", "get", "api", "-n", "demo", "-w", "--context", "kind"]).unwrap();
        assert_eq!(c.namespace.as_deref(), Some("demo"));
        assert_eq!(c.context.as_deref(), Some("kind"));
        assert!(matches!(c.command, Command::Get { ref name, watch: true } if name == "api"));
        let c = Cli::try_parse_from(["kubectl-locall", "-A", "list"]).unwrap();
        assert!(c.all_namespaces);
        let c = Cli::try_parse_from(["kubectl-locall", "status", "api", "--timeout", "90s"]).unwrap();
        assert!(matches!(c.command, Command::Status { timeout, .. } if timeout.get() == Duration::from_secs(90)));
        let c = Cli::try_parse_from(["kubectl-locall", "promote", "api", "--full"]).unwrap();
        assert!(matches!(c.command, Command::Promote { full: true, .. }));
        assert!(Cli::try_parse_from(["kubectl-locall", "frobnicate", "api"]).is_err());
    }
}
