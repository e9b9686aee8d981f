//! An in-memory runtime for tests: no processes, no containers, no ports.
//!
//! It keeps the [`Runtime`] contract (idempotent start, stop of a gone
//! instance is fine, `list` is the truth) and records every call, so a test
//! can assert exactly what the converger asked for. A test can also make it
//! misbehave: crash an instance, fail a start, or act as a backend that
//! checks readiness itself ([`Readiness::Backend`], as kube does).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::{
    ArtifactKind, Attach, Instance, InstanceEvent, InstanceId, InstanceSpec, InstanceState,
    OneOffSpec, OutputSink, ProcessSpec, Readiness, Runtime, RuntimeError,
};
use crate::names::AppName;

/// One call the fake received, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(InstanceId),
    Stop(InstanceId),
    Apply {
        app: AppName,
        release: u32,
        process: String,
        replicas: u32,
    },
}

pub struct FakeRuntime {
    readiness: Readiness,
    state: Mutex<FakeState>,
    events: tokio::sync::broadcast::Sender<InstanceEvent>,
}

#[derive(Default)]
struct FakeState {
    instances: BTreeMap<InstanceId, Instance>,
    calls: Vec<Call>,
    next_port: u16,
    fail_starts: bool,
}

impl Default for FakeRuntime {
    fn default() -> FakeRuntime {
        FakeRuntime::new(Readiness::Cygni)
    }
}

impl FakeRuntime {
    pub fn new(readiness: Readiness) -> FakeRuntime {
        FakeRuntime {
            readiness,
            state: Mutex::new(FakeState {
                next_port: 20000,
                ..FakeState::default()
            }),
            events: tokio::sync::broadcast::channel(64).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, oldest first; clears the record.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Make the next starts fail (true) or work again (false).
    pub fn fail_starts(&self, fail: bool) {
        self.lock().fail_starts = fail;
    }

    /// The instance crashed and was restarted by the backend: same id, a
    /// new incarnation (restarts + 1), reported as an event.
    pub fn crash(&self, id: &InstanceId) {
        if let Some(i) = self.lock().instances.get_mut(id) {
            i.restarts += 1;
            i.state = InstanceState::Starting;
            i.started_at = SystemTime::now();
        }
        let _ = self.events.send(InstanceEvent::Exited(id.clone()));
    }

    /// Put an instance into a state (a backend reporting readiness).
    pub fn set_state(&self, id: &InstanceId, state: InstanceState) {
        if let Some(i) = self.lock().instances.get_mut(id) {
            i.state = state;
        }
    }

    /// An instance that runs without this daemon having started it (what
    /// a restarted daemon finds).
    pub fn adopt(&self, spec: &InstanceSpec) -> Instance {
        let mut st = self.lock();
        let instance = new_instance(&mut st, spec);
        st.instances.insert(instance.id.clone(), instance.clone());
        instance
    }
}

fn new_instance(st: &mut FakeState, spec: &InstanceSpec) -> Instance {
    st.next_port = st.next_port.wrapping_add(1);
    Instance {
        id: spec.id(),
        app: spec.app.clone(),
        release: spec.release,
        process: spec.process.clone(),
        index: spec.index,
        endpoint: spec
            .process
            .is_web()
            .then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, st.next_port))),
        state: InstanceState::Running,
        started_at: SystemTime::now(),
        restarts: 0,
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::Slug
    }

    fn readiness(&self) -> Readiness {
        self.readiness
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let mut st = self.lock();
        let id = spec.id();
        st.calls.push(Call::Start(id.clone()));
        if st.fail_starts {
            return Err(RuntimeError::Spawn {
                id: id.to_string(),
                source: std::io::Error::other("the fake was told to fail"),
            });
        }
        if let Some(i) = st.instances.get(&id) {
            return Ok(i.clone());
        }
        let instance = new_instance(&mut st, &spec);
        st.instances.insert(id, instance.clone());
        Ok(instance)
    }

    async fn stop(&self, id: &InstanceId, _grace: Duration) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Stop(id.clone()));
        st.instances.remove(id);
        Ok(())
    }

    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError> {
        Ok(self
            .lock()
            .instances
            .values()
            .filter(|i| app.is_none_or(|a| &i.app == a))
            .cloned()
            .collect())
    }

    async fn apply(&self, spec: &ProcessSpec, replicas: u32) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Apply {
            app: spec.app.clone(),
            release: spec.release,
            process: spec.process.to_string(),
            replicas,
        });
        if st.fail_starts {
            return Err(RuntimeError::Backend {
                runtime: "fake",
                message: "rollout failed: the fake was told to fail".into(),
                source: None,
            });
        }
        // A Deployment: the process type's instances are replaced whole.
        st.instances
            .retain(|_, i| !(i.app == spec.app && i.process == spec.process));
        for index in 1..=replicas {
            let instance = new_instance(&mut st, &spec.instance(index));
            st.instances.insert(instance.id.clone(), instance);
        }
        Ok(())
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<InstanceEvent>> {
        Some(self.events.subscribe())
    }

    async fn run_once(&self, _spec: OneOffSpec, _output: OutputSink) -> Result<i32, RuntimeError> {
        Ok(0)
    }

    async fn run_attached(&self, _spec: OneOffSpec, _io: Attach) -> Result<i32, RuntimeError> {
        Ok(0)
    }
}
