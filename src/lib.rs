//! Cygni: a self-hosted, git-push platform-as-a-service.
//!
//! The flow runs one way (see ARCHITECTURE.md):
//!
//! ```text
//! ssh ──► git (receive-pack) ──► hook ──► deploy ──► build ──► artifact
//!  │                                        │
//!  ▼                                        ▼
//! commands ───────► state (SQLite) ◄──── release ──► runtime ──► instances
//!                                           │
//!                                           ▼
//! browser ──► proxy ◄── routes (host → endpoints)
//! ```

pub mod acme;
pub mod actor;
pub mod api;
pub mod build;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod deploy;
pub mod errors;
pub mod git;
pub mod hook;
pub mod limits;
pub mod local_push;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod nss;
pub mod procfile;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod span;
pub mod ssh;
pub mod state;
pub mod sync;
