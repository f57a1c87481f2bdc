//! The cache: what the store holds and what to evict. [`make_room`] keeps a store under a
//! size limit by removing the least recently used assets that no running process holds in
//! use ([`Store::hold`]). An asset counts at its full size, present or not: a partial
//! download grows to it.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde::{Serialize, Serializer};

use super::{Removal, Store, User};
use crate::manifest::{AssetId, Manifest};
use crate::units::format_bytes;

/// One asset in the cache.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// The asset id.
    #[serde(serialize_with = "as_string")]
    pub id: AssetId,
    /// The name in its manifest (empty when the asset is damaged).
    pub name: String,
    /// Its full size in bytes (for a damaged asset, its content file's size).
    pub size: u64,
    /// Bytes of it in the store: verified chunks.
    pub present: u64,
    /// Every chunk is in the store and unchanged since it was completed.
    pub complete: bool,
    /// When it was last used, in seconds since the Unix epoch.
    #[serde(serialize_with = "unix_seconds")]
    pub last_used: SystemTime,
    /// A running process holds it in use, so eviction and `cache rm` leave it alone.
    pub in_use: bool,
    /// The processes holding it in use, as far as the OS names them.
    pub users: Vec<User>,
    /// Why its records cannot be read, when they cannot; it can still be evicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

fn as_string<S: Serializer>(id: &AssetId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn unix_seconds<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    s.serialize_f64(since.as_secs_f64())
}

impl Entry {
    /// Who holds it, for messages: `peer_server (pid 12)`, or a guess when the OS says nothing.
    fn holders(&self) -> String {
        if self.users.is_empty() {
            "another process using this cache (a peer_client get or a peer_server)".into()
        } else {
            let users: Vec<String> = self.users.iter().map(User::to_string).collect();
            users.join(", ")
        }
    }

    /// `name (0123456789ab…)`, for messages.
    fn short(&self) -> String {
        let id = self.id.to_string();
        match self.name.as_str() {
            "" => format!("{}…", &id[..12]),
            name => format!("{name} ({}…)", &id[..12]),
        }
    }
}

/// What the cache holds of `id`; `None` when it does not have the asset.
pub fn entry(store: &Store, id: &AssetId) -> Result<Option<Entry>> {
    let Some(last_used) = store.last_used(id) else {
        return Ok(None);
    };
    let users = store.users(id)?;
    let mut entry = Entry {
        id: *id,
        name: String::new(),
        size: 0,
        present: 0,
        complete: false,
        last_used,
        in_use: users.is_some(),
        users: users.unwrap_or_default(),
        damaged: None,
    };
    let described = store.manifest(id).and_then(|manifest| match manifest {
        None => Ok(None),
        Some(m) => {
            let have = store.have(id, &m)?;
            let complete = store.is_complete(id, &m)?;
            Ok(Some((m, have, complete)))
        }
    });
    match described {
        Ok(None) => return Ok(None),
        Ok(Some((m, have, complete))) => {
            entry.present = have.ones().map(|i| m.chunk_len(i) as u64).sum();
            entry.name = m.name;
            entry.size = m.size;
            entry.complete = complete;
        }
        Err(e) => {
            entry.size = fs::metadata(store.data_path(id)).map_or(0, |m| m.len());
            entry.damaged = Some(format!("{e:#}"));
        }
    }
    Ok(Some(entry))
}

/// Every asset in the cache, most recently used first.
pub fn entries(store: &Store) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for id in store.list()? {
        // Gone since the listing: removed by another process.
        if let Some(entry) = entry(store, &id)? {
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse((e.last_used, e.id)));
    Ok(entries)
}

/// Removes one asset from the cache and returns what it was. Refuses, saying which process
/// to stop, when the asset is in use.
pub fn remove(store: &Store, id: &AssetId) -> Result<Entry> {
    let not_there = || {
        format!(
            "asset {id} is not in the cache {} (see peer_client cache ls)",
            store.root().display()
        )
    };
    let Some(mut entry) = entry(store, id)? else {
        bail!(not_there());
    };
    match store.remove(id)? {
        Removal::Removed => Ok(entry),
        Removal::Absent => bail!(not_there()),
        Removal::InUse => {
            entry.users = store.users(id)?.unwrap_or_default();
            let named = match entry.name.as_str() {
                "" => String::new(),
                name => format!(" ({name})"),
            };
            bail!(
                "asset {id}{named} is in use by {}; stop it (a get stops using it when it \
                 finishes), then remove the asset again",
                entry.holders()
            )
        }
    }
}

/// What [`make_room`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The size limit, in bytes.
    pub limit: u64,
    /// Bytes that had to fit under the limit besides what the cache holds.
    pub reserve: u64,
    /// Bytes the cache held before (every asset at its full size).
    pub before: u64,
    /// Bytes it holds now.
    pub after: u64,
    /// The assets removed, least recently used first.
    pub evicted: Vec<Entry>,
    /// Assets that were next in line but in use, so left alone.
    pub in_use: Vec<Entry>,
    /// Leftovers of interrupted work removed (from `tmp/`, and directories of gets that
    /// failed before they learned the manifest).
    pub leftovers: usize,
    /// Why the cache is still over its limit, when it is. Not a failure: the caller goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Report {
    /// One line for people: what was held, what went, what is left.
    pub fn human(&self) -> String {
        let mut line = format!(
            "{} held, limit {}: evicted {} asset{} ({}), {} now",
            format_bytes(self.before),
            format_bytes(self.limit),
            self.evicted.len(),
            if self.evicted.len() == 1 { "" } else { "s" },
            format_bytes(self.before - self.after),
            format_bytes(self.after),
        );
        if self.leftovers > 0 {
            line += &format!("; removed {} leftovers of interrupted work", self.leftovers);
        }
        line
    }
}

/// Removes what interrupted work left behind: half-deleted assets and stale imports in
/// `tmp/`, and directories of gets that failed before they learned the manifest (unless
/// such a get is still running). Returns how many went.
pub fn clean_leftovers(store: &Store) -> Result<usize> {
    let mut cleaned = store.clean_tmp()?;
    for id in store.leftovers()? {
        if store.remove(&id)? == Removal::Removed {
            cleaned += 1;
        }
    }
    Ok(cleaned)
}

/// Evicts least recently used assets that no process holds in use, never one in `keep`,
/// until what the cache holds plus `reserve` (bytes about to arrive that the cache does not
/// count yet) fits in `limit`. When it cannot, because what is left is in use or larger
/// than the limit, the report's `warning` says so; that is not an error. Also cleans
/// leftovers ([`clean_leftovers`]).
pub fn make_room(store: &Store, limit: u64, reserve: u64, keep: &[AssetId]) -> Result<Report> {
    let leftovers = clean_leftovers(store)?;
    let entries = entries(store)?;
    let before: u64 = entries.iter().map(|e| e.size).sum();
    let mut after = before;
    let (kept, mut candidates): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| keep.contains(&e.id));
    candidates.sort_by_key(|e| (e.last_used, e.id));
    let (mut evicted, mut in_use) = (Vec::new(), Vec::new());
    for mut entry in candidates {
        if after.saturating_add(reserve) <= limit {
            break;
        }
        // What decides is the lock, taken now, not the listing's snapshot of it.
        match store.remove(&entry.id)? {
            Removal::Removed => {
                after -= entry.size;
                evicted.push(entry);
            }
            Removal::Absent => after -= entry.size,
            Removal::InUse => {
                entry.in_use = true;
                entry.users = store.users(&entry.id)?.unwrap_or_default();
                in_use.push(entry);
            }
        }
    }
    let warning = (after.saturating_add(reserve) > limit)
        .then(|| over_limit(store, limit, reserve, after, &in_use, &kept));
    Ok(Report {
        limit,
        reserve,
        before,
        after,
        evicted,
        in_use,
        leftovers,
        warning,
    })
}

/// [`make_room`] for a download of `manifest`: the asset itself is kept, and reserved for
/// at its full size unless the cache already counts it (it has the manifest).
pub fn make_room_for(store: &Store, limit: u64, manifest: &Manifest) -> Result<Report> {
    let id = manifest.id();
    let reserve = match store.manifest(&id)? {
        Some(_) => 0,
        None => manifest.size,
    };
    make_room(store, limit, reserve, &[id])
}

/// Why the cache stays over its limit, and what to do about it.
fn over_limit(
    store: &Store,
    limit: u64,
    reserve: u64,
    after: u64,
    in_use: &[Entry],
    kept: &[Entry],
) -> String {
    let holds = match reserve {
        0 => format!("holds {}", format_bytes(after)),
        r => format!(
            "holds {} and needs {} more",
            format_bytes(after),
            format_bytes(r)
        ),
    };
    let mut why = Vec::new();
    if reserve > limit {
        why.push(format!(
            "the new asset alone ({}) is larger than the limit",
            format_bytes(reserve)
        ));
    }
    for entry in kept {
        why.push(format!("{} is being fetched", entry.short()));
    }
    for entry in in_use {
        why.push(format!(
            "{} is in use by {}",
            entry.short(),
            entry.holders()
        ));
    }
    let remedy = match in_use {
        [] => "raise --cache-size",
        [_] => "stop that process or raise --cache-size",
        _ => "stop those processes or raise --cache-size",
    };
    format!(
        "cache {} stays over its limit of {}: it {holds}, and what is left cannot go: {}; \
         {remedy}",
        store.root().display(),
        format_bytes(limit),
        why.join("; ")
    )
}

/// The entries as a table for people: id, size, share present, last use, users, name.
pub fn table(entries: &[Entry], now: SystemTime) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "SIZE".into(),
        "PRESENT".into(),
        "LAST USED".into(),
        "IN USE".into(),
        "NAME".into(),
    ]];
    for e in entries {
        let percent = match e.size {
            0 if e.complete => 100,
            0 => 0,
            // Rounded down: 100% only when every byte is there.
            size => (e.present as u128 * 100 / size as u128) as u64,
        };
        let in_use = match (e.in_use, e.users.is_empty()) {
            (false, _) => "-".to_string(),
            (true, true) => "yes".to_string(),
            (true, false) => {
                let users: Vec<String> = e
                    .users
                    .iter()
                    .map(|u| format!("{}[{}]", u.command, u.pid))
                    .collect();
                users.join(",")
            }
        };
        let name = match &e.damaged {
            Some(why) => format!("(damaged: {why})"),
            None => e.name.clone(),
        };
        rows.push([
            e.id.to_string(),
            format_bytes(e.size),
            format!("{percent}%"),
            ago(now.duration_since(e.last_used).unwrap_or_default()),
            in_use,
            name,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            // Sizes and shares right-aligned; the last column (the name) not padded.
            match c {
                1 | 2 => line += &format!("{cell:>w$}  ", w = widths[c]),
                5 => line += cell,
                _ => line += &format!("{cell:<w$}  ", w = widths[c]),
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    let size: u64 = entries.iter().map(|e| e.size).sum();
    let present: u64 = entries.iter().map(|e| e.present).sum();
    out += &format!(
        "{} asset{}, {} ({} present)\n",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        format_bytes(size),
        format_bytes(present)
    );
    out
}

/// How long ago, for people: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};
    use std::os::unix::fs::FileExt;

    /// Stores `len` bytes under `name`, whole, and returns the manifest.
    fn stored(store: &Store, name: &str, len: usize) -> Manifest {
        // Content differs by name: the name is not part of the asset id (manifest format 2).
        let seed = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) ^ b as usize)
            % 251;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + seed) as u8).collect();
        let m = chunkify(&bytes[..], name, MIN_CHUNK_SIZE).unwrap();
        let partial = store.begin(&m).unwrap();
        partial.data().write_all_at(&bytes, 0).unwrap();
        partial.finish().unwrap();
        m
    }

    /// Marks `id` as used `secs_ago` seconds ago, so tests need not wait for clocks.
    fn used(store: &Store, id: &AssetId, secs_ago: u64) {
        let held = store.hold(id).unwrap();
        drop(held);
        let path = store
            .root()
            .join("assets")
            .join(id.to_string())
            .join("used");
        let when = SystemTime::now() - Duration::from_secs(secs_ago);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    const K: usize = MIN_CHUNK_SIZE as usize;

    #[test]
    fn entries_say_what_is_there_and_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let whole = stored(&store, "whole", 3 * K);
        // A partial download: one chunk of three, and running (held).
        let bytes = vec![7u8; 3 * K];
        let part = chunkify(&bytes[..], "part", MIN_CHUNK_SIZE).unwrap();
        let partial = store.begin(&part).unwrap();
        partial.data().write_all_at(&bytes[..K], 0).unwrap();
        let mut have = crate::bitfield::Bitfield::new(3);
        have.set(0);
        partial.checkpoint(&have).unwrap();
        used(&store, &whole.id(), 60);

        let entries = entries(&store).unwrap();
        assert_eq!(entries.len(), 2);
        let (first, second) = (&entries[0], &entries[1]);
        assert_eq!(
            (first.name.as_str(), second.name.as_str()),
            ("part", "whole")
        );
        assert_eq!((first.size, first.present), (3 * K as u64, K as u64));
        assert!(!first.complete && first.in_use);
        assert_eq!((second.present, second.complete), (3 * K as u64, true));
        assert!(!second.in_use && second.users.is_empty());

        let json = serde_json::to_value(&entries).unwrap();
        assert_eq!(json[1]["id"], whole.id().to_string());
        assert!(json[1]["last_used"].as_f64().unwrap() > 1.6e9);
        let table = table(&entries, SystemTime::now());
        assert!(table.contains(" 33%"), "{table}");
        assert!(table.contains("1m ago"), "{table}");
        assert!(
            table.ends_with("2 assets, 96.00 KiB (64.00 KiB present)\n"),
            "{table}"
        );
    }

    #[test]
    fn make_room_evicts_least_recently_used_first_and_never_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| stored(&store, n, 2 * K).id());
        used(&store, &a, 30);
        used(&store, &b, 20);
        used(&store, &c, 10);
        let size = 2 * K as u64;

        // Fits: nothing goes.
        let report = make_room(&store, 3 * size, 0, &[]).unwrap();
        assert!(report.evicted.is_empty() && report.warning.is_none());
        assert_eq!(report.after, 3 * size);

        // One must go for a reserve of one chunk: the least recently used, a.
        let report = make_room(&store, 3 * size, K as u64, &[]).unwrap();
        assert_eq!(report.evicted.iter().map(|e| e.id).collect::<Vec<_>>(), [a]);
        assert_eq!((report.before, report.after), (3 * size, 2 * size));
        assert_eq!(store.list().unwrap().len(), 2);

        // b is the oldest left but in use: c goes instead, and b stays.
        let held = store.hold(&b).unwrap();
        used(&store, &b, 20);
        let report = make_room(&store, size, 0, &[]).unwrap();
        assert_eq!(report.evicted.iter().map(|e| e.id).collect::<Vec<_>>(), [c]);
        assert!(report.warning.is_none(), "{:?}", report.warning);
        assert_eq!(store.list().unwrap(), [b]);

        // Nothing left to evict: a warning naming what is in use, not an error.
        let report = make_room(&store, 0, 0, &[]).unwrap();
        assert!(report.evicted.is_empty());
        assert_eq!(report.in_use.len(), 1);
        let warning = report.warning.unwrap();
        assert!(warning.contains("in use by"), "{warning}");
        assert!(warning.contains("b ("), "{warning}");
        drop(held);
        assert_eq!(store.list().unwrap(), [b]);
    }

    #[test]
    fn make_room_for_a_download_keeps_it_and_says_when_it_is_larger_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = stored(&store, "old", K).id();
        let bytes = vec![1u8; 4 * K];
        let new = chunkify(&bytes[..], "new", MIN_CHUNK_SIZE).unwrap();

        // Not in the cache yet: its full size is reserved, and the old asset goes.
        let report = make_room_for(&store, 4 * K as u64, &new).unwrap();
        assert_eq!(report.reserve, 4 * K as u64);
        assert_eq!(
            report.evicted.iter().map(|e| e.id).collect::<Vec<_>>(),
            [old]
        );
        assert!(report.warning.is_none());

        // Larger than the limit: stored anyway, with a warning saying why.
        let _partial = store.begin(&new).unwrap();
        let report = make_room_for(&store, 2 * K as u64, &new).unwrap();
        assert_eq!(report.reserve, 0, "counted once, as an entry");
        assert!(report.evicted.is_empty());
        let warning = report.warning.unwrap();
        assert!(
            warning.contains("new (") && warning.contains("fetched"),
            "{warning}"
        );
        let report = make_room(&store, 2 * K as u64, 3 * K as u64, &[new.id()]).unwrap();
        assert!(report.warning.unwrap().contains("larger than the limit"));
    }

    #[test]
    fn remove_refuses_an_asset_in_use_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = stored(&store, "busy", K).id();
        let held = store.hold(&id).unwrap();
        let refusal = remove(&store, &id).unwrap_err().to_string();
        assert!(refusal.contains("is in use by"), "{refusal}");
        if cfg!(target_os = "linux") {
            assert!(
                refusal.contains(&format!("(pid {})", std::process::id())),
                "{refusal}"
            );
        }
        drop(held);
        assert_eq!(remove(&store, &id).unwrap().name, "busy");
        let absent = remove(&store, &id).unwrap_err().to_string();
        assert!(absent.contains("not in the cache"), "{absent}");

        // A get that failed before it learned the manifest left a directory; one running
        // still holds its own.
        let gone = chunkify(&b"gone"[..], "gone", MIN_CHUNK_SIZE).unwrap().id();
        let running = chunkify(&b"running"[..], "running", MIN_CHUNK_SIZE)
            .unwrap()
            .id();
        drop(store.hold(&gone).unwrap());
        let _running = store.hold(&running).unwrap();
        assert_eq!(clean_leftovers(&store).unwrap(), 1);
        assert_eq!(store.leftovers().unwrap(), [running]);
    }
}
