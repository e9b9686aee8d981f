//! The Nixpacks builder: for apps no buildpack recognises, a plan from the
//! `nixpacks` crate (generated offline from the app's files), run on the
//! host.
//!
//! ```text
//! app files (+ nixpacks.toml, NIXPACKS_* config vars) ──► plan
//!     phases, in dependency order: each cmd ──► sh -c CMD, in the build dir
//!     start cmd ──► the default `web` process
//! ```
//!
//! Nixpacks plans are written for a container image: their `setup` phase
//! installs Nix and apt packages and prepares the system (e.g. `mkdir
//! /etc/nginx`), and some commands assume `/app`. On the host, the `setup`
//! phase is skipped and the log says so (the host's toolchains are used, as
//! with the buildpacks; running it would change the host itself), and a
//! command that writes outside the build dir fails when the build user may
//! not. The commands do go through
//! `sh -c`: they are the app's own code, derived from its own files and
//! settings, exactly like a buildpack script or a Procfile line; no string
//! of Cygni's is spliced into them.
//!
//! Behind the `nixpacks` cargo feature; without it, detection reports
//! Nixpacks as not built in and a pinned `nixpacks` is refused clearly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::process::Context;
use super::BuildError;
use crate::names::ProcessType;

/// What Nixpacks makes of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detection {
    /// It has a plan; `display` names its providers, e.g. `Nixpacks (rust)`.
    #[cfg_attr(not(feature = "nixpacks"), allow(dead_code))]
    Plan { display: String },
    #[cfg_attr(not(feature = "nixpacks"), allow(dead_code))]
    NoPlan,
    /// This cygni was built without the `nixpacks` feature.
    #[cfg_attr(feature = "nixpacks", allow(dead_code))]
    Disabled,
}

#[cfg(not(feature = "nixpacks"))]
pub(crate) fn detect(_source: &Path) -> Result<Detection, BuildError> {
    Ok(Detection::Disabled)
}

#[cfg(not(feature = "nixpacks"))]
pub(crate) async fn run(
    _ctx: &Context<'_>,
    _env: &BTreeMap<String, String>,
    _timeout: Duration,
) -> Result<BTreeMap<ProcessType, String>, BuildError> {
    Err(BuildError::NixpacksDisabled)
}

#[cfg(feature = "nixpacks")]
pub(crate) use enabled::{detect, run};

#[cfg(feature = "nixpacks")]
mod enabled {
    use std::ffi::OsString;

    use nixpacks::nixpacks::plan::{generator::GeneratePlanOptions, BuildPlan};
    use tokio::time::Instant;

    use super::super::process::{Ended, Step};
    use super::super::{blocking, say, StepStatus};
    use super::*;

    /// Output of plan commands is indented under their `----->` line.
    const INDENT: &str = "       ";

    /// The phase that provisions the container image; never run on the host.
    const SETUP_PHASE: &str = "setup";

    pub(crate) fn detect(source: &Path) -> Result<Detection, BuildError> {
        let plan = plan(source, &BTreeMap::new())?;
        Ok(if has_work(&plan) {
            Detection::Plan {
                display: display(&plan),
            }
        } else {
            Detection::NoPlan
        })
    }

    pub(crate) async fn run(
        ctx: &Context<'_>,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<BTreeMap<ProcessType, String>, BuildError> {
        let plan = {
            let source = ctx.cwd.to_owned();
            let env = env.clone();
            blocking(move || plan(&source, &env)).await?
        };
        if !has_work(&plan) {
            return Err(BuildError::NixpacksPlan {
                reason: "no plan for this app".into(),
            });
        }
        say(
            ctx.output,
            format!("-----> Building with {}", display(&plan)),
        )
        .await;
        let phases = plan
            .get_sorted_phases()
            .map_err(|err| BuildError::NixpacksPlan {
                reason: format!("{err:#}"),
            })?;

        let deadline = Instant::now() + timeout;
        let mut extra_paths: Vec<String> = Vec::new();
        for phase in &phases {
            let name = phase.get_name();
            let packages: Vec<&str> = phase
                .nix_pkgs
                .iter()
                .chain(phase.apt_pkgs.iter())
                .flatten()
                .map(String::as_str)
                .collect();
            if name == SETUP_PHASE {
                let wants = if packages.is_empty() {
                    String::new()
                } else {
                    format!(" (it asks for {})", packages.join(", "))
                };
                say(
                    ctx.output,
                    format!("-----> {name}: skipped, it provisions a container image{wants}; using this host's toolchains"),
                )
                .await;
                continue;
            }
            extra_paths.extend(phase.paths.iter().flatten().cloned());
            for command in phase.cmds.iter().flatten() {
                say(ctx.output, format!("-----> {name}: {command}")).await;
                let step = command_step(ctx, &plan, env, &extra_paths, command);
                let remaining = deadline.saturating_duration_since(Instant::now());
                match step.run_streamed(remaining, ctx.output, INDENT).await? {
                    Ended::Exited(status) if status.success() => {}
                    Ended::Exited(status) => {
                        return Err(BuildError::NixpacksFailed {
                            phase: name,
                            command: command.clone(),
                            status: StepStatus(status),
                        })
                    }
                    Ended::TimedOut => {
                        return Err(BuildError::Timeout {
                            what: "the nixpacks build".into(),
                            after: timeout,
                        })
                    }
                }
            }
        }

        let mut processes = BTreeMap::new();
        if let Some(start) = plan.start_phase.as_ref().and_then(|s| s.cmd.as_ref()) {
            say(ctx.output, format!("-----> Start command (web): {start}")).await;
            processes.insert(ProcessType::web(), start.clone());
        }
        Ok(processes)
    }

    /// `sh -c COMMAND` with the plan's variables, then the app's config
    /// vars (the app's own setting wins), and the phases' extra paths.
    fn command_step(
        ctx: &Context<'_>,
        plan: &BuildPlan,
        env: &BTreeMap<String, String>,
        extra_paths: &[String],
        command: &str,
    ) -> Step {
        let mut step = Step::new("/bin/sh", ctx.cwd, ctx.home, ctx.run_as)
            .arg("-c")
            .arg(command);
        let variables = plan.variables.iter().flatten().chain(env);
        for (name, value) in variables {
            // The build's own plumbing stays Cygni's.
            if !matches!(name.as_str(), "PATH" | "HOME") {
                step = step.env(name, value);
            }
        }
        if !extra_paths.is_empty() {
            let mut path = OsString::from(extra_paths.join(":"));
            if let Some(current) = step.env_value("PATH") {
                path.push(":");
                path.push(current);
            }
            step = step.env("PATH", path);
        }
        step
    }

    /// Generates the plan. Config vars with an empty value are left out:
    /// nixpacks reads a bare `NAME` as "take NAME from this process's
    /// environment", which would hand the daemon's own variables to the
    /// build.
    fn plan(source: &Path, env: &BTreeMap<String, String>) -> Result<BuildPlan, BuildError> {
        let path = source.to_str().ok_or_else(|| BuildError::NixpacksPlan {
            reason: "the build dir's path is not UTF-8".into(),
        })?;
        let envs: Vec<String> = env
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        nixpacks::generate_build_plan(
            path,
            envs.iter().map(String::as_str).collect(),
            &GeneratePlanOptions::default(),
        )
        .map_err(|err| BuildError::NixpacksPlan {
            reason: format!("{err:#}"),
        })
    }

    /// Whether the plan gives anything to do: a phase command or a start
    /// command. (An unknown tree still yields a plan, an empty one.)
    fn has_work(plan: &BuildPlan) -> bool {
        let commands = plan
            .phases
            .iter()
            .flatten()
            .any(|(_, phase)| phase.cmds.as_ref().is_some_and(|cmds| !cmds.is_empty()));
        let start = plan
            .start_phase
            .as_ref()
            .is_some_and(|start| start.cmd.is_some());
        commands || start
    }

    fn display(plan: &BuildPlan) -> String {
        match plan.providers.as_deref() {
            Some(providers) if !providers.is_empty() => {
                format!("Nixpacks ({})", providers.join(", "))
            }
            _ => "Nixpacks".into(),
        }
    }
}
