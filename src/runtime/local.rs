//! The local runtime: supervised processes. (work in progress)
