//! Why a command failed, where a script must branch on it: a typed cause that the library
//! attaches to an `anyhow` error at the raising site and `cli::finish` maps to an exit code.
//! Classification never looks at message text.

use std::fmt;

/// The causes a caller (a CI script, through the exit code) can tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No tracker answered at the URL, or what answered is not a swarmcache tracker.
    TrackerUnreachable,
    /// The tracker refused the request: no or a wrong token, overloaded, or broken (5xx).
    TrackerRefused,
    /// The download ran out of sources: none known, every one dropped or lacking what is
    /// missing, or none delivered a chunk for the stall timeout.
    NoSource,
    /// The local disk or file permissions stopped the command.
    Local,
    /// The command was told to do something it refuses (a flag is missing or wrong), such as
    /// sending a token over plain HTTP to another host.
    Usage,
}

/// An error message tagged with its [`Failure`]; it displays as the message alone.
#[derive(Debug)]
pub struct Tagged {
    /// The cause.
    pub failure: Failure,
    message: String,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Tagged {}

impl Failure {
    /// A new error saying `message`, tagged with this cause.
    pub fn error(self, message: impl fmt::Display) -> anyhow::Error {
        anyhow::Error::new(self.tag(message))
    }

    /// `message` tagged with this cause, to attach with `anyhow::Error::context`.
    pub fn tag(self, message: impl fmt::Display) -> Tagged {
        Tagged {
            failure: self,
            message: message.to_string(),
        }
    }

    /// The outermost cause tagged anywhere in `error`'s chain.
    pub fn of(error: &anyhow::Error) -> Option<Failure> {
        // anyhow's own downcast sees through its context layers (which `chain` yields as
        // opaque wrappers); `chain` finds a tag that a std error carries as its source.
        error
            .downcast_ref::<Tagged>()
            .or_else(|| error.chain().find_map(|c| c.downcast_ref::<Tagged>()))
            .map(|t| t.failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_tag_is_found_under_context_and_displays_as_its_message() {
        let e = Failure::NoSource.error("no source holds chunk 3");
        assert_eq!(format!("{e:#}"), "no source holds chunk 3");
        let wrapped: anyhow::Result<()> = Err(e);
        let wrapped = wrapped.context("getting big.iso").unwrap_err();
        assert_eq!(Failure::of(&wrapped), Some(Failure::NoSource));
        assert_eq!(
            format!("{wrapped:#}"),
            "getting big.iso: no source holds chunk 3"
        );
        assert_eq!(Failure::of(&anyhow::anyhow!("plain")), None);
    }

    #[test]
    fn a_tag_attached_as_context_keeps_the_typed_error_below_it() {
        let inner = anyhow::Error::new(std::io::Error::other("x"));
        let e = inner.context(Failure::TrackerRefused.tag("tracker refused GET /x"));
        assert_eq!(Failure::of(&e), Some(Failure::TrackerRefused));
        assert!(e.downcast_ref::<std::io::Error>().is_some());
    }
}
