//! Procfile parsing. (work in progress)
