//! Host figures from sysinfo, sampled when a scrape asks (never on a
//! request path): CPU use since the previous sample, memory, and the disk
//! that holds the data dir.

use std::path::PathBuf;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use sysinfo::{Disks, System};

/// One sample.
#[derive(Debug, Default, Clone)]
pub struct HostSample {
    /// 0 to 1, every core together; since the previous sample.
    pub cpu_ratio: f64,
    pub cpus: usize,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    /// The daemon's own resident memory.
    pub process_rss: u64,
}

/// Keeps sysinfo's state between samples: CPU use is a difference.
pub struct Sampler {
    data_dir: PathBuf,
    sys: System,
    disks: Disks,
}

impl Sampler {
    pub fn new(data_dir: PathBuf) -> Sampler {
        Sampler {
            data_dir,
            sys: System::new(),
            disks: Disks::new(),
        }
    }

    pub fn sample(&mut self) -> HostSample {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        // The disk that holds the data dir: the longest mount point it is under.
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|d| self.data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let pid = sysinfo::get_current_pid().ok();
        if let Some(pid) = pid {
            self.sys.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                true,
                sysinfo::ProcessRefreshKind::nothing().with_memory(),
            );
        }
        HostSample {
            cpu_ratio: f64::from(self.sys.global_cpu_usage()) / 100.0,
            cpus: self.sys.cpus().len(),
            memory_total: self.sys.total_memory(),
            memory_available: self.sys.available_memory(),
            disk_total: disk.map_or(0, |d| d.total_space()),
            disk_available: disk.map_or(0, |d| d.available_space()),
            process_rss: pid
                .and_then(|p| self.sys.process(p))
                .map_or(0, |p| p.memory()),
        }
    }
}

/// The host gauges, registered.
pub(super) struct HostGauges {
    cpu: Gauge<f64, AtomicU64>,
    cpus: Gauge,
    memory_total: Gauge,
    memory_available: Gauge,
    disk_total: Gauge,
    disk_available: Gauge,
    rss: Gauge,
}

impl HostGauges {
    pub(super) fn register(r: &mut Registry) -> HostGauges {
        let g = HostGauges {
            cpu: Gauge::default(),
            cpus: Gauge::default(),
            memory_total: Gauge::default(),
            memory_available: Gauge::default(),
            disk_total: Gauge::default(),
            disk_available: Gauge::default(),
            rss: Gauge::default(),
        };
        r.register(
            "cygni_host_cpu_usage_ratio",
            "CPU in use on the host since the previous scrape, 0 to 1 over all cores",
            g.cpu.clone(),
        );
        r.register("cygni_host_cpus", "CPUs on the host", g.cpus.clone());
        r.register(
            "cygni_host_memory_total_bytes",
            "Memory on the host",
            g.memory_total.clone(),
        );
        r.register(
            "cygni_host_memory_available_bytes",
            "Memory available for new work on the host",
            g.memory_available.clone(),
        );
        r.register(
            "cygni_host_data_disk_total_bytes",
            "Size of the filesystem that holds the data dir",
            g.disk_total.clone(),
        );
        r.register(
            "cygni_host_data_disk_available_bytes",
            "Free space on the filesystem that holds the data dir",
            g.disk_available.clone(),
        );
        r.register(
            "cygni_process_resident_memory_bytes",
            "Resident memory of the daemon",
            g.rss.clone(),
        );
        g
    }

    pub(super) fn set(&self, s: &HostSample) {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.cpu.set(s.cpu_ratio);
        self.cpus.set(s.cpus as i64);
        self.memory_total.set(i(s.memory_total));
        self.memory_available.set(i(s.memory_available));
        self.disk_total.set(i(s.disk_total));
        self.disk_available.set(i(s.disk_available));
        self.rss.set(i(s.process_rss));
    }
}
