//! `cluster:nodes` and `cluster:join-command` (admins; the kube runtime).

use super::{json, CommandError};
use crate::ssh::Exec;

pub(super) async fn nodes(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let nodes = exec.ctx.service.cluster_nodes(&exec.identity).await?;
    if as_json {
        exec.stdout(json(&nodes)?).await;
        return Ok(());
    }
    let mut out = format!(
        "{:<24} {:<14} {:<9} {:<16} {}\n",
        "NAME", "ROLE", "STATUS", "ADDRESS", "VERSION"
    );
    for n in &nodes {
        out.push_str(&format!(
            "{:<24} {:<14} {:<9} {:<16} {}\n",
            n.name,
            n.role,
            if n.ready { "Ready" } else { "NotReady" },
            n.address.as_deref().unwrap_or("-"),
            n.version
        ));
    }
    exec.stdout(out).await;
    Ok(())
}

pub(super) async fn join_command(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let join = exec.ctx.service.cluster_join(&exec.identity).await?;
    if as_json {
        exec.stdout(json(&join)?).await;
        return Ok(());
    }
    exec.stdout(format!(
        "# On the new node, from a Cygni release or checkout, as root:\n\
         installer/install.sh --join {} --token {}\n",
        join.server, join.token
    ))
    .await;
    Ok(())
}
