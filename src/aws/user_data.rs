//! The placeholders MCM replaces in a class's user data before launch, so
//! that one bootstrap script serves every machine of a class:
//!
//! - [`MACHINE_NAME_PLACEHOLDER`] becomes the Machine's name;
//! - [`BOOTSTRAP_TOKEN_PLACEHOLDER`] becomes the machine's bootstrap token
//!   (`<id>.<secret>`, see `controller::node::bootstrap_token`).
//!
//! As in MCM (`userdata.go`), a placeholder that does not occur literally is
//! looked for in its URL-encoded form (Go's `url.QueryEscape`, e.g.
//! `%3C%3CBOOTSTRAP_TOKEN%3E%3E` inside an Ignition `data:` URI), and that
//! form is replaced by the URL-encoded value. Pure, and on bytes: user data
//! that is not UTF-8 (gzip) passes through untouched unless it holds a
//! placeholder.

use crate::aws::credentials::SecretString;

/// Replaced by the Machine's name.
pub const MACHINE_NAME_PLACEHOLDER: &str = "<<MACHINE_NAME>>";

/// Replaced by the machine's bootstrap token.
pub const BOOTSTRAP_TOKEN_PLACEHOLDER: &str = "<<BOOTSTRAP_TOKEN>>";

/// What the placeholders of one launch stand for.
#[derive(Clone, Copy, Debug)]
pub struct Substitutions<'a> {
    /// The Machine's name.
    pub machine_name: &'a str,
    /// The bootstrap token, when the user data asks for one (its `Debug`
    /// never shows it).
    pub bootstrap_token: Option<&'a SecretString>,
}

/// Whether `data` holds the bootstrap token placeholder, literally or
/// URL-encoded: only then is a token created for the machine.
pub fn needs_bootstrap_token(data: &[u8]) -> bool {
    contains(data, BOOTSTRAP_TOKEN_PLACEHOLDER.as_bytes())
        || contains(data, query_escape(BOOTSTRAP_TOKEN_PLACEHOLDER).as_bytes())
}

/// `data` with every placeholder replaced. Without a token, its placeholder
/// stays as it is.
pub fn substitute(data: &[u8], with: &Substitutions<'_>) -> Vec<u8> {
    let mut out = replace_placeholder(data, MACHINE_NAME_PLACEHOLDER, with.machine_name);
    if let Some(token) = with.bootstrap_token {
        out = replace_placeholder(&out, BOOTSTRAP_TOKEN_PLACEHOLDER, token.expose());
    }
    out
}

/// The literal placeholder by `value`, else its URL-encoded form by the
/// URL-encoded `value`.
fn replace_placeholder(data: &[u8], placeholder: &str, value: &str) -> Vec<u8> {
    if contains(data, placeholder.as_bytes()) {
        return replace_bytes(data, placeholder.as_bytes(), value.as_bytes());
    }
    let encoded = query_escape(placeholder);
    if contains(data, encoded.as_bytes()) {
        return replace_bytes(data, encoded.as_bytes(), query_escape(value).as_bytes());
    }
    data.to_vec()
}

/// Go's `url.QueryEscape`: unreserved characters (`A-Z a-z 0-9 - _ . ~`)
/// stay, a space becomes `+`, every other byte `%XX` (upper-case hex).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace_bytes(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !needle.is_empty() && rest.len() >= needle.len() {
        if rest.starts_with(needle) {
            out.extend_from_slice(replacement);
            rest = &rest[needle.len()..];
        } else if let Some((&first, tail)) = rest.split_first() {
            out.push(first);
            rest = tail;
        }
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<'a>(token: Option<&'a SecretString>) -> Substitutions<'a> {
        Substitutions {
            machine_name: "shoot--p--c-worker-z1-5d8f7-abcde",
            bootstrap_token: token,
        }
    }

    #[test]
    fn query_escape_is_gos() {
        assert_eq!(
            query_escape(MACHINE_NAME_PLACEHOLDER),
            "%3C%3CMACHINE_NAME%3E%3E"
        );
        assert_eq!(
            query_escape(BOOTSTRAP_TOKEN_PLACEHOLDER),
            "%3C%3CBOOTSTRAP_TOKEN%3E%3E"
        );
        assert_eq!(
            query_escape("a b/c?d=e&f~g.h-i_j"),
            "a+b%2Fc%3Fd%3De%26f~g.h-i_j"
        );
        assert_eq!(query_escape("abc123.xyz"), "abc123.xyz");
    }

    #[test]
    fn literal_placeholders_are_replaced_everywhere() {
        let token = SecretString::new("abc123.0123456789abcdef");
        let data = b"name=<<MACHINE_NAME>> token=<<BOOTSTRAP_TOKEN>> again=<<MACHINE_NAME>>";
        let out = substitute(data, &with(Some(&token)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name=shoot--p--c-worker-z1-5d8f7-abcde token=abc123.0123456789abcdef \
             again=shoot--p--c-worker-z1-5d8f7-abcde"
        );
    }

    #[test]
    fn url_encoded_placeholders_are_replaced_by_encoded_values() {
        let token = SecretString::new("abc123.0123456789abcdef");
        let data = b"data:,token%3D%3C%3CBOOTSTRAP_TOKEN%3E%3E%26name%3D%3C%3CMACHINE_NAME%3E%3E";
        let out = String::from_utf8(substitute(data, &with(Some(&token)))).unwrap();
        assert_eq!(
            out,
            "data:,token%3Dabc123.0123456789abcdef%26name%3Dshoot--p--c-worker-z1-5d8f7-abcde"
        );
        // A value with characters to escape is escaped in the encoded form.
        let odd = Substitutions {
            machine_name: "a b/c",
            bootstrap_token: None,
        };
        assert_eq!(
            substitute(b"x%3C%3CMACHINE_NAME%3E%3Ey", &odd),
            b"xa+b%2Fcy"
        );
    }

    #[test]
    fn the_literal_form_wins_and_the_encoded_one_then_stays() {
        // As in MCM: only one form is replaced, the literal one when present.
        let data = b"<<MACHINE_NAME>> %3C%3CMACHINE_NAME%3E%3E";
        let out = substitute(data, &with(None));
        assert_eq!(
            out,
            b"shoot--p--c-worker-z1-5d8f7-abcde %3C%3CMACHINE_NAME%3E%3E"
        );
    }

    #[test]
    fn without_a_token_its_placeholder_stays_and_binary_data_passes() {
        assert_eq!(
            substitute(b"t=<<BOOTSTRAP_TOKEN>>", &with(None)),
            b"t=<<BOOTSTRAP_TOKEN>>"
        );
        let gzip = [0x1f, 0x8b, 0x08, 0x00, 0xff, b'<', b'<', 0x00];
        assert_eq!(substitute(&gzip, &with(None)), gzip);
    }

    #[test]
    fn a_token_is_needed_only_where_its_placeholder_is() {
        assert!(needs_bootstrap_token(b"--token <<BOOTSTRAP_TOKEN>>"));
        assert!(needs_bootstrap_token(b"t%3D%3C%3CBOOTSTRAP_TOKEN%3E%3E"));
        assert!(!needs_bootstrap_token(b"hostname: <<MACHINE_NAME>>"));
        assert!(!needs_bootstrap_token(b""));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let token = SecretString::new("abc123.0123456789abcdef");
        let debug = format!("{:?}", with(Some(&token)));
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
