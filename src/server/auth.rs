//! The bearer token that TCP clients send when the daemon listens beyond
//! loopback (`authorization: Bearer <token>`, as gRPC's call credentials
//! send it).

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// A token, kept as its SHA-256 so that comparing it takes the same time
/// whatever the guess (and does not tell the length).
#[derive(Clone)]
pub struct BearerToken(Arc<[u8; 32]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// The shortest token accepted: a guessable one would protect nothing.
pub const MIN_TOKEN_CHARS: usize = 16;

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the token has {} characters: at least {MIN_TOKEN_CHARS}",
                token.chars().count()
            ));
        }
        // What an HTTP header value carries as text: printable ASCII.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token may hold only printable ASCII (no spaces, control or non-ASCII characters)"
                    .into(),
            );
        }
        Ok(BearerToken(Arc::new(
            Sha256::digest(token.as_bytes()).into(),
        )))
    }

    /// The token in `path` (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
        Self::new(&text).map_err(|why| anyhow::anyhow!("token file {}: {why}", path.display()))
    }

    fn matches(&self, sent: &str) -> bool {
        let sent: [u8; 32] = Sha256::digest(sent.as_bytes()).into();
        sent.iter()
            .zip(self.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let sent = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim_start());
        match sent {
            Some(token) if self.matches(token) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the bearer token is wrong")),
            None => Err(Status::unauthenticated(
                "this address needs a bearer token: send `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Checks every call against `token`; lets all through without one.
pub(super) fn interceptor(
    token: Option<BearerToken>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req| {
        if let Some(t) = &token {
            t.check(&req)?;
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(authorization: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(v) = authorization {
            req.metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        req
    }

    #[test]
    fn only_the_right_token_passes() {
        let mut check = interceptor(Some(BearerToken::new("0123456789abcdef-x\n").unwrap()));
        assert!(check(call(Some("Bearer 0123456789abcdef-x"))).is_ok());
        assert!(check(call(Some("bearer 0123456789abcdef-x"))).is_ok());
        for wrong in [
            None,
            Some("Bearer 0123456789abcdef-y"),
            Some("Bearer 0123456789abcdef-x "),
            Some("Basic 0123456789abcdef-x"),
            Some("Bearer "),
        ] {
            let s = check(call(wrong)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        }
        let mut open = interceptor(None);
        assert!(open(call(None)).is_ok());
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(BearerToken::new("short").is_err());
        assert!(BearerToken::new("0123456789 abcdef").is_err());
        // A header cannot carry it: every client would be refused.
        assert!(BearerToken::new("0123456789abcdéf").is_err());
        assert!(BearerToken::new("  0123456789abcdef  \n").is_ok());
    }
}
