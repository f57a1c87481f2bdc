//! Origin URLs (web seeds): the `http://` and `https://` addresses of a web server, an
//! object store or a CDN holding an asset's bytes, listed in its catalog entry. Pure: the
//! checks every URL passes before the tracker stores it, a client fetches from it, or the
//! CLI sends it.
//!
//! A URL comes from a holder of the publish right and goes to every client of the asset,
//! which then connects to it: it is hostile input on both sides. So it is bounded, plain
//! printable ASCII (what RFC 3986 allows unencoded), `http` or `https` only (no `file:`,
//! no other scheme a client library might know), and carries no credentials (a
//! `user:password@` would be handed to every client) and no fragment (never sent anyway).

use anyhow::{Result, bail};

/// Longest origin URL accepted: object-store URLs with a signed query string run to about
/// 1 500 characters; 2 KiB is also what every HTTP server takes in a request line.
pub const MAX_URL_LEN: usize = 2048;
/// Most origin URLs one asset lists: a few mirrors or CDNs. Each is a place every client
/// may connect to, and every announce answer carries them all (8 × 2 KiB at most).
pub const MAX_ORIGIN_URLS: usize = 8;

/// Checks an origin URL's form and returns it as given: `http://HOST[:PORT]/PATH` or
/// `https://…`, at most [`MAX_URL_LEN`] characters of printable ASCII, no credentials, no
/// fragment. The error says what is wrong and what to do.
pub fn check(url: &str) -> Result<&str> {
    let shown = || {
        let cut: String = url.chars().take(80).collect();
        if cut.len() < url.len() {
            format!("{cut:?}…")
        } else {
            format!("{cut:?}")
        }
    };
    if url.len() > MAX_URL_LEN {
        bail!(
            "origin URL {} is {} bytes long, more than the {MAX_URL_LEN} allowed",
            shown(),
            url.len()
        );
    }
    if let Some(bad) = url
        .chars()
        .find(|&c| !c.is_ascii_graphic() || "\"<>\\^`{|}".contains(c))
    {
        bail!(
            "origin URL {} contains {bad:?}: percent-encode it (a space is %20)",
            shown()
        );
    }
    let lower = url.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://"]
        .iter()
        .find_map(|scheme| lower.starts_with(scheme).then(|| &url[scheme.len()..]))
    else {
        bail!("origin URL {} must start with http:// or https://", shown());
    };
    if url.contains('#') {
        bail!(
            "origin URL {} has a fragment (#…), which is never sent to the server: remove it",
            shown()
        );
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        bail!(
            "origin URL {} carries credentials (user@host): every client of the asset would see them; give a URL that needs none (a public or pre-signed one)",
            shown()
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => bail!("origin URL {} has an unclosed [ in its host", shown()),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("origin URL {} names no host", shown());
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        bail!("origin URL {} has a bad port {port:?}", shown());
    }
    Ok(url)
}

/// Checks a list of origin URLs: each by [`check`], at most [`MAX_ORIGIN_URLS`], none
/// twice.
pub fn check_all<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for url in urls {
        check(url)?;
        if out.iter().any(|u| u == url) {
            bail!("origin URL {url:?} is given twice");
        }
        if out.len() == MAX_ORIGIN_URLS {
            bail!("more than {MAX_ORIGIN_URLS} origin URLs for one asset");
        }
        out.push(url.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_urls_pass_as_given() {
        for good in [
            "http://127.0.0.1:8080/f.bin",
            "https://cdn.example.com/a/b.iso?X-Amz-Signature=ab%20cd&x=1",
            "HTTPS://Example.COM/x",
            "http://[::1]:80/x",
            "http://host",
        ] {
            assert_eq!(check(good).unwrap(), good);
        }
    }

    #[test]
    fn hostile_urls_are_refused_saying_why() {
        let long = format!("http://h/{}", "a".repeat(MAX_URL_LEN));
        for (bad, why) in [
            ("file:///etc/passwd", "http:// or https://"),
            ("ftp://h/x", "http:// or https://"),
            ("gopher://h", "http:// or https://"),
            ("http://h/a b", "percent-encode"),
            ("http://h/a\nb", "percent-encode"),
            ("http://h/é", "percent-encode"),
            ("http://user:pw@h/x", "credentials"),
            ("http://h/x#frag", "fragment"),
            ("http:///x", "no host"),
            ("http://:80/x", "no host"),
            ("http://h:0/x", "bad port"),
            ("http://h:99999/x", "bad port"),
            ("http://h:x/x", "bad port"),
            ("http://[::1/x", "unclosed"),
            (long.as_str(), "more than"),
        ] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.len() < 400, "the message stays short: {e}");
        }
    }

    #[test]
    fn a_list_is_bounded_and_has_no_repeats() {
        let urls: Vec<String> = (0..=MAX_ORIGIN_URLS)
            .map(|n| format!("http://h/{n}"))
            .collect();
        let few = check_all(urls[..2].iter().map(String::as_str)).unwrap();
        assert_eq!(few, urls[..2]);
        let e = check_all(urls.iter().map(String::as_str)).unwrap_err();
        assert!(e.to_string().contains("more than 8"), "{e}");
        let e = check_all(["http://h/1", "http://h/1"]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
