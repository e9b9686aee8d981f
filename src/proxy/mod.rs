//! The reverse proxy: routes snapshot, HTTP listener. (work in progress)
