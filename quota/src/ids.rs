//! Identifier and unit newtypes, validated once at the boundary.

use std::fmt;
use std::sync::Arc;

/// Longest id accepted anywhere (campaigns, rounds, prizes, partners, users, request ids).
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("must not be empty")]
    Empty,
    /// The id was longer than [`MAX_ID_LEN`] bytes.
    #[error("must be at most {MAX_ID_LEN} bytes, got {0}")]
    TooLong(usize),
    /// The id held a character outside `[A-Za-z0-9._:@-]`.
    #[error("may only hold letters, digits and . _ : @ -; found {0:?}")]
    BadChar(char),
}

/// Checks the shared id alphabet: printable ASCII that is safe in URLs, keys and logs.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` against the id alphabet.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A campaign's id, unique in a config.
    CampaignId
);
string_id!(
    /// A round's id, unique in a config.
    RoundId
);
string_id!(
    /// A prize's id, unique across all rounds of a config (counters are keyed by it).
    PrizeId
);
string_id!(
    /// A delivery partner's id.
    PartnerId
);
string_id!(
    /// A client user's id.
    UserId
);

/// The sequence number of a published config; every publish gets the previous one plus one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SeqNo(pub u64);

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount of money in integer cents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Cents(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_input_with_reason() {
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"a".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(check_id("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(check_id("u/1"), Err(IdError::BadChar('/')));
        assert!(check_id("user-1@x.y_z:2").is_ok());
    }
}
