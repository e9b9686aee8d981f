//! The last hour of host figures, for the dashboard's chart: a background
//! task samples CPU, memory and the data dir's disk every 15 s into a
//! bounded ring (240 samples). Pages read the ring; nothing samples on a
//! request path.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::host::Sampler;

/// How often the sampler runs.
pub const EVERY: Duration = Duration::from_secs(15);
/// One hour at [`EVERY`].
pub const KEEP: usize = 240;

/// One sample, as shares of the whole (0 to 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Unix seconds.
    pub at: i64,
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
    pub memory_total: u64,
    pub disk_total: u64,
}

pub struct HostHistory {
    capacity: usize,
    points: Mutex<VecDeque<Point>>,
}

impl Default for HostHistory {
    fn default() -> Self {
        HostHistory::with_capacity(KEEP)
    }
}

impl HostHistory {
    pub fn with_capacity(capacity: usize) -> HostHistory {
        HostHistory {
            capacity: capacity.max(1),
            points: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
        }
    }

    /// Add a sample; the oldest goes once the ring is full.
    pub fn push(&self, p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        while points.len() >= self.capacity {
            points.pop_front();
        }
        points.push_back(p);
    }

    /// Oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

fn share(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Sample into `history` every `every` until `shutdown`. sysinfo reads
/// /proc synchronously, so each sample runs on the blocking pool.
pub async fn run(
    history: std::sync::Arc<HostHistory>,
    data_dir: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut sampler = Some(Sampler::new(data_dir));
    // The first point a second after start, so a fresh daemon's chart is
    // not empty for a whole period.
    let first = tokio::time::Instant::now() + Duration::from_secs(1).min(every);
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // CPU use is a difference between two readings: prime the first.
    if let Some(s) = sampler.as_mut() {
        s.sample();
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(mut s) = sampler.take() else { return };
        let r = tokio::task::spawn_blocking(move || {
            let sample = s.sample();
            (s, sample)
        })
        .await;
        let Ok((s, sample)) = r else {
            tracing::warn!("the host sampler stopped");
            return;
        };
        sampler = Some(s);
        history.push(Point {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            cpu: sample.cpu_ratio.clamp(0.0, 1.0),
            memory: share(
                sample.memory_total.saturating_sub(sample.memory_available),
                sample.memory_total,
            ),
            disk: share(
                sample.disk_total.saturating_sub(sample.disk_available),
                sample.disk_total,
            ),
            memory_total: sample.memory_total,
            disk_total: sample.disk_total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: i64) -> Point {
        Point {
            at,
            cpu: 0.5,
            memory: 0.25,
            disk: 0.75,
            memory_total: 1,
            disk_total: 1,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_hour() {
        let h = HostHistory::default();
        for at in 0..(KEEP as i64 + 10) {
            h.push(p(at));
        }
        let points = h.points();
        assert_eq!(points.len(), KEEP);
        assert_eq!(points[0].at, 10);
        assert_eq!(points[KEEP - 1].at, KEEP as i64 + 9);
    }

    #[test]
    fn shares_are_bounded() {
        assert_eq!(share(5, 0), 0.0);
        assert_eq!(share(5, 10), 0.5);
        assert_eq!(share(50, 10), 1.0);
    }
}
