//! Who may call the AdminService, and what each may do: named principals with a role
//! (reader < operator < deployer) and, separately, the `data` grant for the calls that
//! read order data or overwrite results. A principal is known by a bearer token, stored
//! only as its sha256 (`ADMIN_TOKENS`, `ADMIN_TOKENS_FILE`) and compared in constant time,
//! or by the subject (CN) of its mTLS client certificate (`ADMIN_CERT_PRINCIPALS`). The
//! plain `ADMIN_TOKEN` is one principal, `admin`, a deployer with the data grant, as it
//! always could do everything.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tonic::{Request, Status};

use crate::config::ConfigError;

/// What a principal may do; each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads rulesets, history, rollouts, workers and plugins.
    Reader,
    /// And shadows, canaries, rolls back, replays to scratch.
    Operator,
    /// And deploys, activates, promotes.
    Deployer,
}

impl Role {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "reader" => Some(Self::Reader),
            "operator" => Some(Self::Operator),
            "deployer" => Some(Self::Deployer),
            _ => None,
        }
    }

    /// Its name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Deployer => "deployer",
        }
    }
}

/// A named caller of the AdminService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name (the token's, or the certificate's subject CN).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Whether it may read order data and overwrite results (`role+data`).
    pub data: bool,
}

/// What one call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// At least this role.
    pub role: Role,
    /// And the data grant.
    pub data: bool,
}

impl Need {
    /// A role, without the data grant.
    pub const fn role(role: Role) -> Self {
        Self { role, data: false }
    }

    /// A role and the data grant.
    pub const fn data(role: Role) -> Self {
        Self { role, data: true }
    }
}

/// Parses `role` or `role+data`.
fn parse_grant(var: &str, text: &str) -> Result<(Role, bool), ConfigError> {
    let (role, data) = match text.split_once('+') {
        Some((role, "data")) => (role, true),
        Some(_) => {
            return Err(ConfigError(format!(
                "{var}: `{text}` is not a role: give reader, operator or deployer, optionally with +data"
            )));
        }
        None => (text, false),
    };
    let role = Role::parse(role).ok_or_else(|| {
        ConfigError(format!(
            "{var}: `{role}` is not a role: give reader, operator or deployer"
        ))
    })?;
    Ok((role, data))
}

/// Parses `ADMIN_TOKENS` (or the lines of `ADMIN_TOKENS_FILE`): entries
/// `name:role[+data]:sha256-hex-of-the-token`, separated by commas or new lines; `#`
/// starts a comment.
pub fn parse_tokens(var: &str, text: &str) -> Result<Vec<(Principal, [u8; 32])>, ConfigError> {
    let mut tokens: Vec<(Principal, [u8; 32])> = Vec::new();
    for (n, entry) in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let parts: Vec<&str> = entry.split(':').collect();
        // The entry itself is never shown: it may be a token pasted by mistake.
        let [name, grant, hash] = parts[..] else {
            return Err(ConfigError(format!(
                "{var}: entry {} is not name:role:sha256 (e.g. alice:deployer:<64 hex digits>)",
                n + 1
            )));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError(format!(
                "{var}: `{name}` is not a name (printable, no spaces)"
            )));
        }
        let (role, data) = parse_grant(var, grant)?;
        let digest = hex::decode(hash)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                ConfigError(format!(
                    "{var}: the hash of `{name}` is not 64 hex digits: give the sha256 of its \
                     token (`printf %s TOKEN | sha256sum`), never the token"
                ))
            })?;
        if tokens.iter().any(|(p, _)| p.name == name) {
            return Err(ConfigError(format!("{var}: `{name}` is named twice")));
        }
        tokens.push((
            Principal {
                name: name.to_string(),
                role,
                data,
            },
            digest,
        ));
    }
    Ok(tokens)
}

/// Parses `ADMIN_CERT_PRINCIPALS`: entries `subject-cn:role[+data]` separated by commas.
pub fn parse_subjects(var: &str, text: &str) -> Result<Vec<Principal>, ConfigError> {
    let mut subjects: Vec<Principal> = Vec::new();
    for entry in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some((name, grant)) = entry.rsplit_once(':') else {
            return Err(ConfigError(format!(
                "{var}: `{entry}` is not subject-cn:role (e.g. ops-robot:operator)"
            )));
        };
        let (role, data) = parse_grant(var, grant)?;
        if name.trim().is_empty() || subjects.iter().any(|p| p.name == name) {
            return Err(ConfigError(format!(
                "{var}: `{name}` is empty or named twice"
            )));
        }
        subjects.push(Principal {
            name: name.to_string(),
            role,
            data,
        });
    }
    Ok(subjects)
}

/// Every principal the AdminService knows. Empty: no credentials are asked for (an
/// admin API on a loopback address only: start-up refuses anything else).
#[derive(Debug, Clone, Default)]
pub struct Principals {
    tokens: Vec<(Principal, [u8; 32])>,
    subjects: Vec<Principal>,
}

impl Principals {
    /// The principals of `tokens` (hashed), the plain `ADMIN_TOKEN` (as `admin`, a
    /// deployer with the data grant) and the certificate `subjects`.
    pub fn new(
        mut tokens: Vec<(Principal, [u8; 32])>,
        plain: Option<&str>,
        subjects: Vec<Principal>,
    ) -> Self {
        if let Some(token) = plain.filter(|t| !t.is_empty()) {
            tokens.push((
                Principal {
                    name: "admin".into(),
                    role: Role::Deployer,
                    data: true,
                },
                Sha256::digest(token.as_bytes()).into(),
            ));
        }
        Self { tokens, subjects }
    }

    /// Whether any credential is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.subjects.is_empty()
    }

    /// Whether some principal is known by its certificate.
    pub fn by_certificate(&self) -> bool {
        !self.subjects.is_empty()
    }

    /// The principal of a bearer `token`: its sha256 compared with every known hash, in
    /// constant time each, and all of them every time.
    fn by_token(&self, token: &str) -> Option<&Principal> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (principal, hash) in &self.tokens {
            let differ = given
                .iter()
                .zip(hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differ == 0 {
                found = Some(principal);
            }
        }
        found
    }

    /// Who sent `request`: its bearer token's principal, else its client certificate's
    /// subject's. No credentials configured: the local caller, with every right.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if self.is_empty() {
            return Ok(Principal {
                name: "local".into(),
                role: Role::Deployer,
                data: true,
            });
        }
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = bearer {
            return self
                .by_token(token)
                .cloned()
                .ok_or_else(|| Status::unauthenticated("authorization: wrong bearer token"));
        }
        if self.by_certificate()
            && let Some(subject) = request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| subject_cn(c.as_ref())))
        {
            return self
                .subjects
                .iter()
                .find(|p| p.name == subject)
                .cloned()
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "the client certificate's subject `{subject}` is no principal (ADMIN_CERT_PRINCIPALS)"
                    ))
                });
        }
        Err(Status::unauthenticated(
            "authorization: a bearer token (ADMIN_TOKEN, ADMIN_TOKENS) or a client certificate of a principal is required",
        ))
    }
}

/// The common name of a DER certificate's subject.
fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The AdminService's interceptor: every call is authenticated, and its principal goes
/// with the request for the handler to authorize ([`require`]).
#[derive(Clone)]
pub struct AdminAuth {
    principals: Arc<Principals>,
}

impl AdminAuth {
    /// Authenticates with `principals`.
    pub fn new(principals: Principals) -> Self {
        Self {
            principals: Arc::new(principals),
        }
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.principals.authenticate(&request)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal of `request` if it may make `call`, which needs `need`; else
/// PERMISSION_DENIED naming the principal, the call and what it lacks.
pub fn require<T>(request: &Request<T>, call: &str, need: Need) -> Result<Principal, Status> {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return Err(Status::unauthenticated(
            "the request was not authenticated (a bug)",
        ));
    };
    if principal.role < need.role {
        return Err(Status::permission_denied(format!(
            "{call}: `{}` has role {}; it needs {}",
            principal.name,
            principal.role.as_str(),
            need.role.as_str()
        )));
    }
    if need.data && !principal.data {
        return Err(Status::permission_denied(format!(
            "{call}: `{}` has no data grant (role+data), which reading order data and \
             overwriting results need",
            principal.name
        )));
    }
    Ok(principal.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_are_named_with_a_role_and_stored_hashed() {
        let text = format!(
            "alice:deployer+data:{}, bob:operator:{}\n# a comment\ncarol:reader:{}",
            hash("a-token"),
            hash("b-token"),
            hash("c-token")
        );
        let principals =
            Principals::new(parse_tokens("ADMIN_TOKENS", &text).unwrap(), None, vec![]);
        let by = |t: &str| {
            principals
                .by_token(t)
                .map(|p| (p.name.as_str(), p.role, p.data))
        };
        assert_eq!(by("a-token"), Some(("alice", Role::Deployer, true)));
        assert_eq!(by("b-token"), Some(("bob", Role::Operator, false)));
        assert_eq!(by("c-token"), Some(("carol", Role::Reader, false)));
        assert_eq!(by("nobody"), None);
        // The plain ADMIN_TOKEN is `admin`, a deployer with the data grant.
        let plain = Principals::new(Vec::new(), Some("change-me"), vec![]);
        let admin = plain.by_token("change-me").unwrap();
        assert_eq!(
            (admin.name.as_str(), admin.role, admin.data),
            ("admin", Role::Deployer, true)
        );
    }

    #[test]
    fn bad_entries_name_the_problem_and_never_echo_a_token() {
        let err = |text: &str| parse_tokens("ADMIN_TOKENS", text).unwrap_err().0;
        assert!(err("alice:admin:00").contains("`admin` is not a role"));
        assert!(
            err(&format!("alice:deployer+all:{}", hash("x"))).contains("optionally with +data")
        );
        let pasted = err("alice:deployer:the-secret-token-itself");
        assert!(
            pasted.contains("not 64 hex digits") && !pasted.contains("the-secret"),
            "{pasted}"
        );
        let no_parts = err("a-secret-token-without-colons");
        assert!(!no_parts.contains("without-colons"), "{no_parts}");
        assert!(err(&format!("a:reader:{0},a:reader:{0}", hash("x"))).contains("named twice"));
        let subjects = parse_subjects(
            "ADMIN_CERT_PRINCIPALS",
            "ops-robot:operator, ci:deployer+data",
        )
        .unwrap();
        assert_eq!(subjects[1].role, Role::Deployer);
        assert!(subjects[1].data);
        assert!(parse_subjects("ADMIN_CERT_PRINCIPALS", "ops").is_err());
    }

    #[test]
    fn each_role_may_do_what_the_ones_below_may() {
        let call = |role: Role, data: bool, need: Need| {
            let mut request = Request::new(());
            request.extensions_mut().insert(Principal {
                name: "p".into(),
                role,
                data,
            });
            require(&request, "Call", need)
                .map(|_| ())
                .map_err(|s| s.code())
        };
        let denied = Err(tonic::Code::PermissionDenied);
        assert_eq!(call(Role::Reader, false, Need::role(Role::Reader)), Ok(()));
        assert_eq!(
            call(Role::Reader, false, Need::role(Role::Operator)),
            denied
        );
        assert_eq!(
            call(Role::Operator, false, Need::role(Role::Deployer)),
            denied
        );
        assert_eq!(
            call(Role::Deployer, false, Need::role(Role::Operator)),
            Ok(())
        );
        assert_eq!(
            call(Role::Deployer, false, Need::data(Role::Reader)),
            denied
        );
        assert_eq!(call(Role::Reader, true, Need::data(Role::Reader)), Ok(()));
    }
}
