//! Human names for assets: what a name and a tag may be, the `NAME:TAG` reference a user
//! types (`ci/app:latest`, or `ci/app` meaning `:latest`), and the JSON of the tracker's
//! `/tags` endpoints, shared by the tracker and its client.
//!
//! Names and tags come from token holders and end up in URLs, log lines and a file on the
//! tracker, so both are short and of a small charset:
//! - a name is 1 to [`MAX_NAME`] bytes of lowercase letters, digits, `.`, `_`, `-` and `/`,
//!   in `/`-separated parts that each start with a letter or a digit: no empty part, no
//!   leading or trailing `/`, no `.` or `..` part, nothing hidden (`.x`);
//! - a tag is 1 to [`MAX_TAG`] bytes of letters, digits, `.`, `_` and `-`, starting with a
//!   letter or a digit.
//!
//! A reference of 64 hex digits is an asset id, never a name, so ids stay what they were.

use serde::{Deserialize, Serialize};

use crate::manifest::AssetId;

/// Longest name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest tag, in bytes.
pub const MAX_TAG: usize = 64;
/// The tag a reference without one means.
pub const DEFAULT_TAG: &str = "latest";

/// A checked `NAME:TAG`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagRef {
    /// The name, e.g. `ci/app`.
    pub name: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
}

impl std::fmt::Display for TagRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl std::str::FromStr for TagRef {
    type Err = String;

    /// `NAME:TAG`, or `NAME` for `NAME:latest`.
    fn from_str(text: &str) -> Result<TagRef, String> {
        let (name, tag) = text.split_once(':').unwrap_or((text, DEFAULT_TAG));
        check_name(name)?;
        check_tag(tag).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(TagRef {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

/// What a user names an asset by on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// 64 hex digits.
    Id(AssetId),
    /// A name and a tag, resolved by the tracker.
    Tag(TagRef),
}

impl std::str::FromStr for Reference {
    type Err = String;

    fn from_str(text: &str) -> Result<Reference, String> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return text.parse().map(Reference::Id);
        }
        text.parse().map(Reference::Tag).map_err(|e| {
            format!(
                "{:?} is not an asset id (64 hex digits) nor a NAME:TAG such as ci/app:latest: {e}",
                text.chars().take(80).collect::<String>()
            )
        })
    }
}

/// Checks a name against the rules above.
pub fn check_name(name: &str) -> Result<(), String> {
    let rule = "a name is 1 to 128 bytes of a-z 0-9 . _ - in /-separated parts, each starting with a letter or a digit";
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "name {:?} has {} bytes: {rule}",
            clip(name),
            name.len()
        ));
    }
    let charset = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    let part_ok = |part: &str| {
        part.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && part.bytes().all(charset)
    };
    if !name.split('/').all(part_ok) {
        return Err(format!("name {:?} is refused: {rule}", clip(name)));
    }
    Ok(())
}

/// Checks a tag against the rules above.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    let starts = tag
        .as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if tag.len() > MAX_TAG || !starts || !tag.bytes().all(valid) {
        return Err(format!(
            "tag {:?} is refused: a tag is 1 to 64 bytes of letters, digits, . _ -, starting with a letter or a digit",
            clip(tag)
        ));
    }
    Ok(())
}

/// At most 80 characters of hostile text, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// One move of a tag: to which asset, when (Unix seconds), by whom (a token's name, or in
/// open mode the address the request came from).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagMove {
    /// The asset id the tag pointed at from then on.
    pub id: String,
    /// When, in Unix seconds (the tracker's clock).
    pub at: u64,
    /// Who moved it.
    pub by: String,
}

/// When and by whom an asset was unpublished.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unpublished {
    /// When, in Unix seconds (the tracker's clock).
    pub at: u64,
    /// Who: a token's name, an address in open mode, or `retention`.
    pub by: String,
}

/// Answer to `GET /tags/NAME:TAG` and `PUT /tags/NAME:TAG`: where the tag points now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagAnswer {
    /// The name.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The asset id it points at.
    pub id: String,
    /// When and by whom it moved there.
    pub moved: TagMove,
    /// For a move: the id it pointed at before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// One tag of a name, in `GET /tags/NAME`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagHistory {
    /// The tag.
    pub tag: String,
    /// The asset id it points at now.
    pub id: String,
    /// Set when that asset was unpublished since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpublished: Option<Unpublished>,
    /// Every move kept, oldest first; the last is the current one.
    pub history: Vec<TagMove>,
}

/// Answer to `GET /tags/NAME`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameAnswer {
    /// The name.
    pub name: String,
    /// Its tags, by tag.
    pub tags: Vec<TagHistory>,
}

/// Body of `PUT /tags/NAME:TAG`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRequest {
    /// The asset id the tag is to point at.
    pub id: String,
}

/// Answer to `DELETE /assets/ID`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnpublishAnswer {
    /// The asset id.
    pub id: String,
    /// When and by whom.
    pub unpublished: Unpublished,
    /// The tags that pointed at it (`NAME:TAG`), which now answer that it is unpublished.
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_ids_or_checked_names_and_tags() {
        let id = "ab".repeat(32);
        assert!(matches!(id.parse::<Reference>(), Ok(Reference::Id(_))));
        let tag: TagRef = "ci/app".parse().unwrap();
        assert_eq!(tag.to_string(), "ci/app:latest");
        let tag: TagRef = "ci/app-2.x:v1.2_rc-3".parse().unwrap();
        assert_eq!(
            (tag.name.as_str(), tag.tag.as_str()),
            ("ci/app-2.x", "v1.2_rc-3")
        );
        for bad in [
            "",
            ":x",
            "ci/app:",
            "ci//app",
            "/ci",
            "ci/",
            "ci/../etc",
            "ci/./x",
            "..",
            ".hidden",
            "CI/app",
            "ci app",
            "ci/app:la test",
            "ci/app:-x",
            "ci/app:a:b",
            "ci\\app",
            "ci/ä",
            "ci/app:.x",
            "ci/app:x/y",
            "x\n",
        ] {
            assert!(bad.parse::<TagRef>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(MAX_NAME).parse::<TagRef>().is_ok());
        assert!("a".repeat(MAX_NAME + 1).parse::<TagRef>().is_err());
        assert!(
            format!("a:{}", "t".repeat(MAX_TAG))
                .parse::<TagRef>()
                .is_ok()
        );
        assert!(
            format!("a:{}", "t".repeat(MAX_TAG + 1))
                .parse::<TagRef>()
                .is_err()
        );
        // Hostile text is clipped in the error.
        let long = format!("{}!", "a".repeat(10_000));
        assert!(long.parse::<TagRef>().unwrap_err().len() < 400);
        // Fewer than 64 hex digits are a name, not an id.
        assert!(matches!(
            "ab".repeat(31).parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        assert!(
            "ci/APP"
                .parse::<Reference>()
                .unwrap_err()
                .contains("NAME:TAG")
        );
    }
}
