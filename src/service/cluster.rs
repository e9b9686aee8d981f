//! The cluster the apps run on (the kube runtime): its nodes, and the line
//! that joins another one. Admins only; on a runtime that is not a
//! cluster, a clear "not kube" line.

use super::{Actor, Service, ServiceError};
use crate::runtime::{JoinInfo, NodeInfo};

impl Service {
    fn cluster_of(
        &self,
        actor: &Actor,
        what: &str,
    ) -> Result<&dyn crate::runtime::Cluster, ServiceError> {
        if !actor.is_admin() {
            return Err(ServiceError::Forbidden(format!("only admins can {what}")));
        }
        let runtime = &self.platform.runtime;
        runtime.cluster().ok_or_else(|| {
            ServiceError::Invalid(format!(
                "the runtime is {}, not kube: there is no cluster (start Cygni with --runtime kube)",
                runtime.name()
            ))
        })
    }

    /// The cluster's nodes, control plane first.
    pub async fn cluster_nodes(&self, actor: &Actor) -> Result<Vec<NodeInfo>, ServiceError> {
        let cluster = self.cluster_of(actor, "list the cluster's nodes")?;
        cluster.nodes().await.map_err(runtime_error)
    }

    /// What `install.sh --join` needs on a new node.
    pub async fn cluster_join(&self, actor: &Actor) -> Result<JoinInfo, ServiceError> {
        let cluster = self.cluster_of(actor, "see the cluster's join token")?;
        cluster.join_info().await.map_err(runtime_error)
    }
}

fn runtime_error(e: crate::runtime::RuntimeError) -> ServiceError {
    ServiceError::Invalid(e.to_string())
}
