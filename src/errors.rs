//! Error text for people: an error with its causes on one line.

/// `e` and each cause it carries, joined with `: `, each said once (many
/// errors already print their source; a refused connection says so only
/// in its source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the engine")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create /x: {0}")]
    struct Says(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let quiet = super::chain(&Outer(refused()));
        assert!(quiet.starts_with("cannot reach the engine: "), "{quiet}");
        assert!(quiet.to_lowercase().contains("refused"), "{quiet}");
        let says = Says(refused());
        let text = super::chain(&says);
        assert_eq!(text, says.to_string());
    }
}
