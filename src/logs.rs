//! Per-app log store: instance output and build logs. (work in progress)
