//! Identifiers and names, each checked once at the edge ("parse, don't
//! validate"): a [`PeerId`], a [`FileId`], a user name or a file name that
//! exists as a value has passed its rules.

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Serialize};

/// The longest user name, in bytes.
pub const MAX_USER_LEN: usize = 64;
/// The longest file name, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// The longest search text, in bytes.
pub const MAX_QUERY_LEN: usize = 255;

macro_rules! hash_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex, the form users see.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex digits, for log lines.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| NameError::BadId(s.chars().take(80).collect()))?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

hash_id!(
    /// A node's identity: BLAKE3 of its TLS public key (SubjectPublicKeyInfo).
    PeerId
);
hash_id!(
    /// A file's identity: BLAKE3 of its manifest.
    FileId
);
hash_id!(
    /// What one file is made of, whatever its name or the folder holding
    /// it: BLAKE3 of its size, chunk size and chunk hashes
    /// (`content::Manifest::contents`). Owners are pooled by it.
    ContentId
);

impl PeerId {
    /// The peer id that belongs to a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki_der: &[u8]) -> Self {
        PeerId(*blake3::hash(spki_der).as_bytes())
    }
}

/// A client of the tracker API for exactly-once writes: random, chosen by
/// the client at start, paired with a sequence number per write.
pub type ClientId = u128;

/// Why a name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: Cow<'static, str> },
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        what: Cow<'static, str>,
        len: usize,
        max: usize,
    },
    #[error("{what} contains a control character")]
    Control { what: Cow<'static, str> },
    #[error("{what} contains a path separator or is a relative path component")]
    Path { what: Cow<'static, str> },
    #[error("user name may only hold letters, digits, '.', '-' and '_'")]
    UserChars,
    #[error("not a 64-digit hex id: {0:?}")]
    BadId(String),
}

fn common(s: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what: what.into() });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what: what.into(),
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(NameError::Control { what: what.into() });
    }
    Ok(())
}

/// Checks a user name: 1-64 bytes of ASCII letters, digits, `.`, `-`, `_`.
pub fn check_user(s: &str) -> Result<(), NameError> {
    common(s, "user name", MAX_USER_LEN)?;
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(NameError::UserChars);
    }
    Ok(())
}

/// Checks a file name as it travels on the wire and lands on disk: 1-255
/// bytes, no control characters, no `/` or `\`, not `.` or `..`. A name
/// that passes is a single path component and cannot leave a folder.
pub fn check_file_name(s: &str) -> Result<(), NameError> {
    common(s, "file name", MAX_FILE_NAME_LEN)?;
    if s.contains('/') || s.contains('\\') || s == "." || s == ".." {
        return Err(NameError::Path {
            what: "file name".into(),
        });
    }
    Ok(())
}

/// Checks search text.
pub fn check_query(s: &str) -> Result<(), NameError> {
    if s.len() > MAX_QUERY_LEN {
        return Err(NameError::TooLong {
            what: "search text".into(),
            len: s.len(),
            max: MAX_QUERY_LEN,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(NameError::Control {
            what: "search text".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        for bad in [
            "",
            ".",
            "..",
            "../../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "a\nb",
            "a\0b",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_file_name(&"x".repeat(256)).is_err());
        for good in ["a.txt", "..hidden", "x y (1).iso", "ünïcödé"] {
            check_file_name(good).unwrap();
        }
    }

    #[test]
    fn user_names() {
        assert!(check_user("").is_err());
        assert!(check_user("al ice").is_err());
        assert!(check_user(&"a".repeat(65)).is_err());
        check_user("alice_1.b-c").unwrap();
    }

    #[test]
    fn id_hex_round_trip() {
        let id = FileId([7; 32]);
        assert_eq!(id.to_hex().parse::<FileId>().unwrap(), id);
        assert!("xyz".parse::<FileId>().is_err());
    }
}
