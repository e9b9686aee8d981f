//! The release pipeline: what happens to a push.
//!
//! `deploy` is the only writer of releases. For now it acknowledges pushes
//! (`-----> Received APP (BRANCH abc1234)`) and lets them land; the build
//! and release stages plug in here.

use crate::hook::{Push, PushHandler, PushOutput};

/// Decides pushes arriving through the pre-receive hook.
pub struct Deployer;

#[async_trait::async_trait]
impl PushHandler for Deployer {
    async fn pre_receive(&self, push: Push, out: PushOutput) -> Result<(), String> {
        for update in &push.updates {
            let Some(branch) = update.branch() else {
                continue;
            };
            if update.is_delete() {
                return Err(format!("deleting branch {branch} is not allowed"));
            }
            let short = &update.new[..update.new.len().min(7)];
            let _ = out
                .send(format!(
                    "-----> Received {} ({branch} {short})\n",
                    push.session.app
                ))
                .await;
        }
        Ok(())
    }
}
