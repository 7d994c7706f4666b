//! Image references: parsing and normalisation the way Docker and the kubelet
//! do it (`busybox` means `docker.io/library/busybox:latest`).
//!
//! Grammar (after the distribution project's reference grammar):
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] component ( "/" component )*
//! registry   := host [ ":" port ]
//! component  := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex | "sha512:" 128 lowercase hex
//! ```

use std::fmt;

/// The registry an unqualified name such as `busybox` refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag assumed when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker Hub's API lives on a different host from its canonical name.
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Old spelling of Docker Hub that references still use.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// Official images live under this namespace on Docker Hub.
const OFFICIAL_NAMESPACE: &str = "library";
/// Longest fully qualified name (registry + "/" + repository) accepted.
const NAME_MAX_LEN: usize = 255;
const TAG_MAX_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if given (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag; `latest` is filled in only when no digest is given either.
    pub tag: Option<String>,
    /// Content digest (`sha256:<hex>`), if the reference pins one.
    pub digest: Option<String>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {kind}")]
pub struct ReferenceError {
    /// The string as the caller gave it.
    pub input: String,
    /// What is wrong with it.
    pub kind: ReferenceErrorKind,
}

/// The specific defect in a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    #[error("reference is empty")]
    Empty,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("invalid repository path component {0:?}")]
    InvalidComponent(String),
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    #[error("invalid digest {0:?} (want sha256:<64 hex> or sha512:<128 hex>)")]
    InvalidDigest(String),
    #[error("repository name is longer than {NAME_MAX_LEN} characters")]
    NameTooLong,
    #[error("a 64-character hexadecimal string is an image id, not a repository name")]
    LooksLikeImageId,
}

impl Reference {
    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` if the reference has a tag (a CRI repo tag).
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest`: a repo digest as the CRI reports it.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// Host to talk to for the registry HTTP API (Docker Hub's canonical name
    /// is not where its API is served).
    pub fn api_registry_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses and normalises an image reference.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    parse_inner(s).map_err(|kind| ReferenceError {
        input: s.to_string(),
        kind,
    })
}

fn parse_inner(s: &str) -> Result<Reference, ReferenceErrorKind> {
    if s.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    // A digest contains ':' itself, so split it off before looking for a tag.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => {
            if !is_valid_digest(d) {
                return Err(ReferenceErrorKind::InvalidDigest(d.to_string()));
            }
            (rest, Some(d.to_string()))
        }
        None => (s, None),
    };
    // The tag separator is a ':' after the last '/'; earlier ones are a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let split = last_slash + i;
            let tag = &rest[split + 1..];
            if !is_valid_tag(tag) {
                return Err(ReferenceErrorKind::InvalidTag(tag.to_string()));
            }
            (&rest[..split], Some(tag.to_string()))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    if is_hex_of_len(name, 64) {
        return Err(ReferenceErrorKind::LooksLikeImageId);
    }

    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if looks_like_registry(first) => (first, path),
        _ => (DEFAULT_REGISTRY, name),
    };
    if !is_valid_registry(registry) {
        return Err(ReferenceErrorKind::InvalidRegistry(registry.to_string()));
    }
    let registry = if registry == LEGACY_DOCKER_HUB {
        DEFAULT_REGISTRY
    } else {
        registry
    };
    if path.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceErrorKind::Uppercase);
    }
    for component in path.split('/') {
        if !is_valid_component(component) {
            return Err(ReferenceErrorKind::InvalidComponent(component.to_string()));
        }
    }
    let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path.to_string()
    };
    if registry.len() + 1 + repository.len() > NAME_MAX_LEN {
        return Err(ReferenceErrorKind::NameTooLong);
    }
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (tag, _) => tag,
    };
    Ok(Reference {
        registry: registry.to_string(),
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component names a registry only if it looks like
/// a host (has a dot or a port) or is `localhost`.
fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn is_valid_registry(s: &str) -> bool {
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        // Bracketed IPv6 literal, optionally followed by :port.
        let Some((addr, after)) = inner.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => return is_valid_port(port),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port
        && !is_valid_port(p)
    {
        return false;
    }
    !host.is_empty() && host.split('.').all(is_valid_domain_component)
}

fn is_valid_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

fn is_valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // An alphanumeric run is required at the start and after a separator.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: &u8| x.is_ascii_alphanumeric() || *x == b'_';
    match b.first() {
        Some(f) if word(f) => {
            b.len() <= TAG_MAX_LEN && b.iter().all(|x| word(x) || *x == b'.' || *x == b'-')
        }
        _ => false,
    }
}

fn is_hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for `sha256:<64 lowercase hex>` and `sha512:<128 lowercase hex>`.
pub fn is_valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => is_hex_of_len(hex, 64),
        Some(("sha512", hex)) => is_hex_of_len(hex, 128),
        _ => false,
    }
}

/// True if `s` is an image id rather than a reference: `sha256:<64 hex>` or a
/// bare 64-hex string (the CRI lets ImageStatus/RemoveImage take either).
pub fn is_image_id(s: &str) -> bool {
    image_id(s).is_some()
}

/// The canonical `sha256:<hex>` form of an image id, or `None` if `s` is not one.
pub fn image_id(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    is_hex_of_len(hex, 64).then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn r(s: &str) -> Reference {
        match parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn kind(s: &str) -> ReferenceErrorKind {
        match parse(s) {
            Ok(r) => panic!("{s:?} should not parse, got {r:?}"),
            Err(e) => e.kind,
        }
    }

    #[test]
    fn official_image_normalises() {
        let x = r("busybox");
        assert_eq!(x.registry, "docker.io");
        assert_eq!(x.repository, "library/busybox");
        assert_eq!(x.tag.as_deref(), Some("latest"));
        assert_eq!(x.digest, None);
        assert_eq!(x.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(x.name(), "docker.io/library/busybox");
        assert_eq!(
            x.tagged().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
    }

    #[test]
    fn user_image_and_explicit_hub() {
        assert_eq!(r("foo/bar").to_string(), "docker.io/foo/bar:latest");
        assert_eq!(
            r("docker.io/busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            r("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            r("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registry_detection() {
        let x = r("127.0.0.1:5000/x/y:1");
        assert_eq!(x.registry, "127.0.0.1:5000");
        assert_eq!(x.repository, "x/y");
        assert_eq!(x.tag.as_deref(), Some("1"));
        assert_eq!(r("localhost/foo").registry, "localhost");
        assert_eq!(r("localhost/foo").repository, "foo");
        assert_eq!(r("localhost:5000/foo:t").registry, "localhost:5000");
        assert_eq!(r("quay.io/coreos/etcd").registry, "quay.io");
        assert_eq!(r("myhost:5000/foo").registry, "myhost:5000");
        assert_eq!(r("[::1]:5000/foo").registry, "[::1]:5000");
        // No dot, no port, not localhost: a Docker Hub namespace.
        let x = r("myhost/foo");
        assert_eq!(x.registry, "docker.io");
        assert_eq!(x.repository, "myhost/foo");
        // Without a slash `localhost:5000` is a name and a tag.
        let x = r("localhost:5000");
        assert_eq!(x.repository, "library/localhost");
        assert_eq!(x.tag.as_deref(), Some("5000"));
        // Registry hosts may have uppercase letters.
        assert_eq!(r("Example.COM/foo").registry, "Example.COM");
    }

    #[test]
    fn digests() {
        let s = format!("busybox@sha256:{HEX64}");
        let x = r(&s);
        assert_eq!(x.tag, None);
        assert_eq!(x.digest.as_deref(), Some(&*format!("sha256:{HEX64}")));
        assert_eq!(
            x.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX64}")
        );
        assert_eq!(x.tagged(), None);

        let x = r(&format!("quay.io/a/b:v1@sha256:{HEX64}"));
        assert_eq!(x.tag.as_deref(), Some("v1"));
        assert!(x.digest.is_some());
        assert_eq!(x.to_string(), format!("quay.io/a/b:v1@sha256:{HEX64}"));
        assert_eq!(
            x.with_digest("sha256:abc"),
            "quay.io/a/b@sha256:abc".to_string()
        );

        let x = r(&format!("a@sha512:{HEX64}{HEX64}"));
        assert!(x.digest.is_some_and(|d| d.starts_with("sha512:")));

        for bad in [
            format!("a@sha256:{}", &HEX64[1..]),
            format!("a@sha256:{HEX64}0"),
            format!("a@sha256:{}", HEX64.to_uppercase()),
            format!("a@md5:{HEX64}"),
            format!("a@sha512:{HEX64}"),
            "a@".to_string(),
            format!("a@sha256:{HEX64}@sha256:{HEX64}"),
        ] {
            assert!(
                matches!(kind(&bad), ReferenceErrorKind::InvalidDigest(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn uppercase_repository_is_refused_with_quoted_input() {
        let e = parse("Foo:bar").unwrap_err();
        assert_eq!(e.kind, ReferenceErrorKind::Uppercase);
        assert_eq!(
            e.to_string(),
            r#"invalid image reference "Foo:bar": repository name must be lowercase"#
        );
        assert_eq!(kind("quay.io/Foo/bar"), ReferenceErrorKind::Uppercase);
        assert_eq!(kind("foo/Bar"), ReferenceErrorKind::Uppercase);
    }

    #[test]
    fn tags() {
        assert_eq!(r("a:_x").tag.as_deref(), Some("_x"));
        assert_eq!(r("a:V1.2-rc_3").tag.as_deref(), Some("V1.2-rc_3"));
        let long = "t".repeat(128);
        assert_eq!(r(&format!("a:{long}")).tag.as_deref(), Some(&*long));
        for bad in [
            "a:".to_string(),
            "a:.x".to_string(),
            "a:-x".to_string(),
            "a:x+y".to_string(),
            format!("a:{long}t"),
        ] {
            assert!(
                matches!(kind(&bad), ReferenceErrorKind::InvalidTag(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn path_components() {
        for ok in [
            "a",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a0/b1.c_d__e-f",
            "0",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a..b", "a___b", "-a", "a-", ".a", "a_", "a/", "a//b", "a_.b", "a+b",
        ] {
            assert!(
                matches!(kind(bad), ReferenceErrorKind::InvalidComponent(_)),
                "{bad}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn bad_registries_and_empties() {
        assert_eq!(kind(""), ReferenceErrorKind::Empty);
        assert_eq!(kind(":tag"), ReferenceErrorKind::Empty);
        assert!(matches!(
            kind("-bad.io/foo"),
            ReferenceErrorKind::InvalidRegistry(_)
        ));
        assert!(matches!(
            kind("host:port/foo"),
            ReferenceErrorKind::InvalidRegistry(_)
        ));
        assert!(matches!(
            kind("a..b.io/foo"),
            ReferenceErrorKind::InvalidRegistry(_)
        ));
        assert_eq!(kind("quay.io/"), ReferenceErrorKind::Empty);
        let long = format!("quay.io/{}", "a".repeat(250));
        assert_eq!(kind(&long), ReferenceErrorKind::NameTooLong);
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id(HEX64));
        assert!(is_image_id(&format!("sha256:{HEX64}")));
        assert!(!is_image_id(&format!("sha256:{}", &HEX64[2..])));
        assert!(!is_image_id(&HEX64.to_uppercase()));
        assert!(!is_image_id("busybox"));
        assert_eq!(image_id(HEX64), Some(format!("sha256:{HEX64}")));
        // A bare id is not a repository name.
        assert_eq!(kind(HEX64), ReferenceErrorKind::LooksLikeImageId);
        // ...but a 64-hex repository under a namespace is fine.
        assert!(parse(&format!("foo/{HEX64}")).is_ok());
    }

    #[test]
    fn api_host() {
        assert_eq!(r("busybox").api_registry_host(), "registry-1.docker.io");
        assert_eq!(r("quay.io/a/b").api_registry_host(), "quay.io");
        assert_eq!(r("127.0.0.1:5000/a").api_registry_host(), "127.0.0.1:5000");
    }

    fn valid_reference() -> impl Strategy<Value = String> {
        let component = "[a-z0-9]{1,4}(([._]|__|-{1,2})[a-z0-9]{1,4}){0,2}";
        let registry = prop_oneof![
            Just(String::new()),
            Just("localhost/".to_string()),
            "[a-z][a-z0-9-]{0,5}[a-z0-9]\\.(io|com)(:[0-9]{1,5})?/",
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{2,5}/",
        ];
        let tag = prop_oneof![Just(String::new()), ":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"];
        let digest = prop_oneof![Just(String::new()), "@sha256:[0-9a-f]{64}"];
        (
            registry,
            proptest::collection::vec(component, 1..4),
            tag,
            digest,
        )
            .prop_map(|(reg, mut comps, tag, digest)| {
                // Without a registry, a first component with a dot would be
                // taken for one.
                if reg.is_empty() {
                    comps[0] = comps[0].replace('.', "-");
                }
                format!("{reg}{}{tag}{digest}", comps.join("/"))
            })
    }

    proptest! {
        #[test]
        fn valid_references_round_trip(s in valid_reference()) {
            let x = parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let shown = x.to_string();
            let again = parse(&shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again, &x);
            prop_assert_eq!(again.to_string(), shown);
            prop_assert!(x.tag.is_some() || x.digest.is_some());
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,80}") {
            if let Ok(x) = parse(&s) {
                // Anything accepted must be stable under display + reparse.
                let again = parse(&x.to_string());
                prop_assert_eq!(again, Ok(x));
            }
        }

        #[test]
        fn reference_like_strings_never_panic(s in "[a-zA-Z0-9./:@_\\-\\[\\]]{0,60}") {
            if let Ok(x) = parse(&s) {
                prop_assert_eq!(parse(&x.to_string()), Ok(x));
            }
        }
    }
}
