//! `status`: the host (CPU, memory, disk, uptime, version) and every app.

use std::time::Duration;

use super::{json, CommandError};
use crate::runtime::InstanceState;
use crate::ssh::Exec;
use crate::state::{formation, releases};

#[derive(serde::Serialize)]
struct Host {
    version: &'static str,
    cpus: usize,
    cpu_percent: f32,
    load_average: [f64; 3],
    memory_total_bytes: u64,
    memory_used_bytes: u64,
    disk_total_bytes: u64,
    disk_free_bytes: u64,
    uptime_secs: u64,
    daemon_uptime_secs: u64,
}

/// Host figures from sysinfo. CPU usage needs two samples a short while
/// apart, so this blocks for ~0.3 s: run it off the async workers.
fn sample_host(data_dir: std::path::PathBuf, daemon_uptime: Duration) -> Host {
    use sysinfo::{Disks, System};
    let mut sys = System::new();
    sys.refresh_cpu_usage();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(250)));
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let load = System::load_average();
    // The disk that holds the data dir: the longest mount point it starts with.
    let disks = Disks::new_with_refreshed_list();
    let disk = disks
        .list()
        .iter()
        .filter(|d| data_dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len());
    Host {
        version: env!("CARGO_PKG_VERSION"),
        cpus: sys.cpus().len(),
        cpu_percent: sys.global_cpu_usage(),
        load_average: [load.one, load.five, load.fifteen],
        memory_total_bytes: sys.total_memory(),
        memory_used_bytes: sys.used_memory(),
        disk_total_bytes: disk.map(|d| d.total_space()).unwrap_or(0),
        disk_free_bytes: disk.map(|d| d.available_space()).unwrap_or(0),
        uptime_secs: System::uptime(),
        daemon_uptime_secs: daemon_uptime.as_secs(),
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

pub(super) async fn show(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let data_dir = ctx.data_dir.clone();
    let daemon_uptime = ctx.started.elapsed();
    let host = tokio::task::spawn_blocking(move || sample_host(data_dir, daemon_uptime))
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?;

    let apps = ctx.service.visible_apps(&exec.identity).await?;
    let (apps, live, formations) = ctx
        .db
        .call(move |c| {
            let live = releases::all_live(c)?;
            let formations = apps
                .iter()
                .map(|a| formation::get(c, &a.name))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((apps, live, formations))
        })
        .await?;
    let instances = ctx
        .platform
        .runtime
        .list(None)
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?;

    let mut rows = Vec::new();
    for (app, stored) in apps.iter().zip(&formations) {
        let release = live.iter().find(|r| r.app == app.name);
        let want: u32 = release
            .map(|r| formation::desired(stored, &r.processes).values().sum())
            .unwrap_or(0);
        let mine: Vec<_> = instances
            .iter()
            .filter(|i| i.app == app.name && Some(i.release) == release.map(|r| r.version))
            .collect();
        let up = mine
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count() as u32;
        let crashed = mine.iter().any(|i| i.state == InstanceState::CrashLoop);
        let state = match (release, app.stopped) {
            (None, _) => "not deployed",
            (_, true) => "stopped",
            _ if crashed => "crashed",
            _ if up >= want => "running",
            _ => "degraded",
        };
        rows.push(serde_json::json!({
            "name": app.name,
            "state": state,
            "release": release.map(|r| r.version),
            "instances_up": up,
            "instances_wanted": want,
            "url": ctx.app_url(&app.name),
        }));
    }

    let text = if as_json {
        json(&serde_json::json!({ "host": host, "apps": rows }))?
    } else {
        let mut s = format!(
            "=== cygni {} (up {}s)\ncpu:     {:.0}% of {} cores, load {:.2} {:.2} {:.2}\nmemory:  {} used of {}\ndisk:    {} free of {} (data dir)\nuptime:  {}h (host)\n\n",
            host.version,
            host.daemon_uptime_secs,
            host.cpu_percent,
            host.cpus,
            host.load_average[0],
            host.load_average[1],
            host.load_average[2],
            gib(host.memory_used_bytes),
            gib(host.memory_total_bytes),
            gib(host.disk_free_bytes),
            gib(host.disk_total_bytes),
            host.uptime_secs / 3600,
        );
        if rows.is_empty() {
            s.push_str("no apps\n");
        }
        for r in &rows {
            s.push_str(&format!(
                "{:<24} {:<13} {:<5} {}/{} up\n",
                r["name"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
                r["release"]
                    .as_u64()
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "-".into()),
                r["instances_up"],
                r["instances_wanted"],
            ));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}
