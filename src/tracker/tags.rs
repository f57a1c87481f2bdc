//! Names, tags and unpublished assets at the tracker: the book of which tag of which name
//! points at which asset (and every move, when and by whom), and of the assets unpublished
//! (`DELETE /assets/ID`, or dropped by `--retain`), so that their peers are told to stop
//! serving them and tags pointing at them say so. Durable as `DATA/tags.json`, rewritten
//! whole and atomically on each change (write, fsync, rename: a crash leaves the old book
//! or the new one), under one lock, so a tag moves atomically and the file never lags
//! what was answered. With `--redis` the book lives in Redis instead, shared by every
//! tracker on it (`shared_meta`): the routes read and change it through
//! [`State::book_read`] and [`State::book_update`], whichever holds it.
//!
//! Bounded against a hostile publisher: at most [`MAX_TAGS`] tags in all, [`MAX_HISTORY`]
//! moves kept per tag (the oldest forgotten), [`MAX_UNPUBLISHED`] unpublished ids
//! remembered (the oldest forgotten: its peers, if any are left, then get 404 and keep
//! their copy, as for an asset the tracker never knew). Names and tags are checked by
//! [`crate::names`]. The book is small (a few MiB at most) and changed by operators'
//! acts, so rewriting it whole costs nothing that matters.
//!
//! The routes: `GET /tags` (the names), `GET /tags/NAME` (its tags and their histories),
//! `GET /tags/NAME:TAG` (where it points: one round trip for `peer_client get NAME:TAG`),
//! `PUT /tags/NAME:TAG` (move it), `POST /assets?tag=NAME:TAG` (publish and tag at once) and
//! `DELETE /assets/ID` (unpublish).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::State;
use super::routes::{HttpError, Reply, err, json, parse_id, read_body};
use crate::api::PublishResponse;
use crate::auth::{Action, Grant};
use crate::fsutil::write_atomic;
use crate::http;
use crate::manifest::AssetId;
use crate::names::{
    NameAnswer, TagAnswer, TagHistory, TagMove, TagRef, TagRequest, UnpublishAnswer, Unpublished,
};
use crate::sync::{LockExt, RwLockExt};

/// Tags kept in all names together.
pub const MAX_TAGS: usize = 4096;
/// Moves kept per tag, the current one included.
pub const MAX_HISTORY: usize = 32;
/// Unpublished asset ids remembered.
pub const MAX_UNPUBLISHED: usize = 4096;
/// Largest `PUT /tags` body: `{"id":"<64 hex>"}` and some room.
const MAX_TAG_BODY: usize = 1024;

/// One tag: every move kept, oldest first; the last is where it points.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Tag {
    history: Vec<TagMove>,
}

impl Tag {
    fn current(&self) -> Option<&TagMove> {
        self.history.last()
    }
}

/// The book, as the file holds it. Pure: time and who act are arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct Book {
    #[serde(default)]
    names: BTreeMap<String, BTreeMap<String, Tag>>,
    #[serde(default)]
    unpublished: BTreeMap<String, Unpublished>,
}

/// Why a move was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MoveError {
    /// The book holds [`MAX_TAGS`] tags already.
    Full,
}

impl Book {
    /// Points `tag` at `id`; the id it pointed at before, if any. Moving a tag to where it
    /// points already changes nothing (a CI job run twice).
    fn move_tag(
        &mut self,
        tag: &TagRef,
        id: &AssetId,
        at: u64,
        by: &str,
    ) -> Result<Option<String>, MoveError> {
        let id = id.to_string();
        let total: usize = self.names.values().map(BTreeMap::len).sum();
        let exists = self
            .names
            .get(&tag.name)
            .is_some_and(|tags| tags.contains_key(&tag.tag));
        if !exists && total >= MAX_TAGS {
            return Err(MoveError::Full);
        }
        let entry = self
            .names
            .entry(tag.name.clone())
            .or_default()
            .entry(tag.tag.clone())
            .or_default();
        let previous = entry.current().map(|m| m.id.clone());
        if previous.as_deref() == Some(id.as_str()) {
            return Ok(previous);
        }
        entry.history.push(TagMove {
            id,
            at,
            by: by.to_string(),
        });
        if entry.history.len() > MAX_HISTORY {
            let extra = entry.history.len() - MAX_HISTORY;
            entry.history.drain(..extra);
        }
        Ok(previous)
    }

    /// Where `tag` points, and when it moved there.
    fn resolve(&self, tag: &TagRef) -> Option<&TagMove> {
        self.names.get(&tag.name)?.get(&tag.tag)?.current()
    }

    /// The ids some tag points at now.
    pub(super) fn tagged(&self) -> HashSet<AssetId> {
        self.names
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|t| t.current()?.id.parse().ok())
            .collect()
    }

    /// Records `id` as unpublished; the tags pointing at it.
    fn unpublish(&mut self, id: &AssetId, at: u64, by: &str) -> Vec<String> {
        let key = id.to_string();
        self.unpublished.insert(
            key.clone(),
            Unpublished {
                at,
                by: by.to_string(),
            },
        );
        while self.unpublished.len() > MAX_UNPUBLISHED {
            let oldest = self
                .unpublished
                .iter()
                .min_by_key(|(_, u)| u.at)
                .map(|(id, _)| id.clone())
                .expect("not empty");
            self.unpublished.remove(&oldest);
        }
        let mut tags = Vec::new();
        for (name, name_tags) in &self.names {
            for (tag, t) in name_tags {
                if t.current().is_some_and(|m| m.id == key) {
                    tags.push(format!("{name}:{tag}"));
                }
            }
        }
        tags
    }

    /// Forgets that `id` was unpublished (it was published again); whether it was.
    fn republished(&mut self, id: &AssetId) -> bool {
        self.unpublished.remove(&id.to_string()).is_some()
    }

    /// When and by whom `id` was unpublished, if it was.
    fn gone(&self, id: &str) -> Option<&Unpublished> {
        self.unpublished.get(id)
    }

    /// Whether `id` is recorded as unpublished.
    pub(super) fn is_unpublished(&self, id: &AssetId) -> bool {
        self.gone(&id.to_string()).is_some()
    }

    /// The ids recorded as unpublished.
    fn unpublished_ids(&self) -> Vec<AssetId> {
        self.unpublished
            .keys()
            .filter_map(|id| id.parse().ok())
            .collect()
    }
}

/// The book and its file. Every change takes the writer's lock, writes the changed book
/// durably, and only then makes it the one answered; readers (every 404 looks here) never
/// wait behind the write, only for the swap of an `Arc`.
#[derive(Debug)]
pub(super) struct Tags {
    path: PathBuf,
    book: RwLock<Arc<Book>>,
    writer: Mutex<()>,
}

impl Tags {
    /// Loads `DATA/tags.json` (none: an empty book). A damaged file stops the start: the
    /// tracker must not forget every tag and unpublished asset silently.
    pub(super) fn open(data: &Path) -> Result<Tags> {
        let path = data.join("tags.json");
        let book = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; restore it from a backup, or move it away to start with no tags",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Tags {
            path,
            book: RwLock::new(Arc::new(book)),
            writer: Mutex::new(()),
        })
    }

    /// Applies `change` to a copy of the book, writes it, and keeps it once written.
    fn update<T>(&self, change: impl FnOnce(&mut Book) -> T) -> Result<T> {
        let _writing = self.writer.locked();
        let book = Arc::clone(&self.book.read_now());
        let mut next = (*book).clone();
        let out = change(&mut next);
        if next != *book {
            let text = serde_json::to_vec_pretty(&next).expect("the book always serializes");
            write_atomic(&self.path, &text)?;
            *self.book.write_now() = Arc::new(next);
        }
        Ok(out)
    }

    /// With `--redis`: keeps `book` (the shared one, as read last) in this tracker's file
    /// too, so that a Redis that lost it can be given it back; a write only when it changed.
    pub(super) fn mirror(&self, book: &Arc<Book>) {
        if Arc::ptr_eq(&self.book.read_now(), book) {
            return;
        }
        let _writing = self.writer.locked();
        if Arc::ptr_eq(&self.book.read_now(), book) {
            return;
        }
        let text = serde_json::to_vec_pretty(&**book).expect("the book always serializes");
        match write_atomic(&self.path, &text) {
            Ok(()) => *self.book.write_now() = Arc::clone(book),
            Err(e) => log::warn!("tracker: keeping a copy of the shared tags failed: {e:#}"),
        }
    }

    /// The book as it is now.
    pub(super) fn current(&self) -> Arc<Book> {
        Arc::clone(&self.book.read_now())
    }

    /// A look at the book under its lock.
    pub(super) fn read<T>(&self, look: impl FnOnce(&Book) -> T) -> T {
        look(&self.book.read_now())
    }

    /// The ids recorded as unpublished (for the start, to finish an interrupted unpublish).
    pub(super) fn unpublished_ids(&self) -> Vec<AssetId> {
        self.read(Book::unpublished_ids)
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who acts, for the book: the token's name, or in open mode the source address.
fn actor(grant: Option<&Grant>, remote: Option<SocketAddr>) -> String {
    match (grant, remote) {
        (Some(g), _) => g.name.clone(),
        (None, Some(r)) => r.ip().to_canonical().to_string(),
        (None, None) => "unknown".into(),
    }
}

fn parse_tag(text: &str) -> Result<TagRef, HttpError> {
    text.parse().map_err(|e: String| err(400, e))
}

fn storage_failed(e: anyhow::Error) -> HttpError {
    err(500, format!("storing the tags failed: {e:#}"))
}

/// The `?tag=NAME:TAG` of a publish, if any (the only query `POST /assets` takes).
fn tag_query(url: &str) -> Result<Option<TagRef>, HttpError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(None);
    };
    let mut pairs = query.split('&').filter(|p| !p.is_empty());
    let Some(pair) = pairs.next() else {
        return Ok(None);
    };
    match pair.strip_prefix("tag=") {
        Some(value) if pairs.next().is_none() => {
            // `:` and `/` may come raw (as our client sends them) or percent-encoded.
            let value = value
                .replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%2F", "/")
                .replace("%2f", "/");
            parse_tag(&value).map(Some)
        }
        _ => Err(err(
            400,
            format!(
                "unknown query {:?}: POST /assets takes only ?tag=NAME:TAG",
                query.chars().take(80).collect::<String>()
            ),
        )),
    }
}

impl State {
    /// The refusal for an asset the catalog does not hold: 410 if it was unpublished (its
    /// peers stop serving it), 404 otherwise.
    pub(super) fn missing(&self, id: &AssetId) -> HttpError {
        let key = id.to_string();
        match self.book_read(|b| b.gone(&key).cloned()) {
            Some(gone) => err(
                410,
                format!(
                    "asset {id} was unpublished at {} by {}; stop serving it",
                    httpdate_of(gone.at),
                    gone.by
                ),
            ),
            None => err(
                404,
                format!("asset {id} is not in the catalog; publish its manifest first"),
            ),
        }
    }

    /// A look at the book: this tracker's, or with `--redis` the one every tracker shares.
    pub(super) fn book_read<T>(&self, look: impl FnOnce(&Book) -> T) -> T {
        match &self.shared {
            Some(shared) => look(&self.shared_book(shared)),
            None => self.tags.read(look),
        }
    }

    /// A change of the book, made durable (in the file, or in Redis) before it is answered.
    pub(super) fn book_update<T>(&self, change: impl FnMut(&mut Book) -> T) -> Result<T> {
        match &self.shared {
            Some(shared) => shared.update_book(change),
            None => self.tags.update(change),
        }
    }

    /// `POST /assets`, with `?tag=NAME:TAG` checked and authorised before the body is read
    /// (a refused tag publishes nothing), then moved once the manifest is stored.
    pub(super) fn publish_tagged(
        &self,
        request: &mut http::Request<'_>,
        grant: Option<&Grant>,
        remote: Option<SocketAddr>,
        token: Option<&str>,
    ) -> Result<Reply, HttpError> {
        let tag = tag_query(request.url())?;
        if let Some(tag) = &tag {
            self.authorize(token, Action::Tag(&tag.name))?;
        }
        let reply = self.publish(request)?;
        // The id is read back from the answer, so that publishing itself stays as it is.
        let Reply::Json(status, body) = &reply else {
            return Ok(reply);
        };
        let status = *status;
        let Ok(answer) = serde_json::from_str::<PublishResponse>(body.as_str()) else {
            return Ok(reply);
        };
        let id = parse_id(&answer.id)?;
        self.book_update(|b| b.republished(&id))
            .map_err(storage_failed)?;
        let Some(tag) = tag else {
            return Ok(reply);
        };
        let by = actor(grant, remote);
        self.book_update(|b| b.move_tag(&tag, &id, unix_now(), &by))
            .map_err(storage_failed)?
            .map_err(full)?;
        let mut value = serde_json::to_value(&answer).expect("API types always serialize");
        value["tag"] = serde_json::Value::String(tag.to_string());
        Ok(json(status, &value))
    }

    /// The routes under `/tags` (`rest`: the path after it, `NAME` or `NAME:TAG`, whose
    /// `/`s are the name's).
    pub(super) fn tags_route(
        &self,
        method: &http::Method,
        rest: &[&str],
        request: &mut http::Request<'_>,
        token: Option<&str>,
        remote: Option<SocketAddr>,
    ) -> Result<Reply, HttpError> {
        let path = rest.join("/");
        let is = |m: &str| matches!(method, http::Method::Other(o) if o == m);
        match method {
            http::Method::Get if path.is_empty() => {
                let grant = self.authorize(token, Action::Browse)?;
                Ok(json(200, &self.names(grant.as_deref())))
            }
            http::Method::Get if path.contains(':') => {
                let tag = parse_tag(&path)?;
                let grant = self.authorize(token, Action::Browse)?;
                self.resolve(&tag, grant.as_deref()).map(|a| json(200, &a))
            }
            http::Method::Get => {
                crate::names::check_name(&path).map_err(|e| err(400, e))?;
                let grant = self.authorize(token, Action::Browse)?;
                self.history(&path, grant.as_deref())
            }
            _ if is("PUT") => {
                let tag = parse_tag(&path)?;
                let grant = self.authorize(token, Action::Tag(&tag.name))?;
                let body = read_body(request, MAX_TAG_BODY)?;
                let req: TagRequest = serde_json::from_str(&body)
                    .map_err(|e| err(400, format!("tag body is not {{\"id\": ID}}: {e}")))?;
                let id = parse_id(&req.id)?;
                self.move_tag(&tag, &id, grant.as_deref(), remote, token)
            }
            _ => Err(err(
                405,
                format!("{method} is not allowed on /tags/{path} (GET, or PUT NAME:TAG)"),
            )),
        }
    }

    /// `GET /tags`: every name, with the number of tags the grant may see.
    fn names(&self, grant: Option<&Grant>) -> serde_json::Value {
        self.book_read(|book| {
            let names: Vec<serde_json::Value> = book
                .names
                .iter()
                .filter_map(|(name, tags)| {
                    let seen = tags
                        .values()
                        .filter(|t| t.current().is_some_and(|m| may_see(grant, &m.id)))
                        .count();
                    (seen > 0).then(|| serde_json::json!({"name": name, "tags": seen}))
                })
                .collect();
            serde_json::Value::Array(names)
        })
    }

    /// `GET /tags/NAME:TAG`: where it points; 410 when that asset was unpublished.
    fn resolve(&self, tag: &TagRef, grant: Option<&Grant>) -> Result<TagAnswer, HttpError> {
        let (moved, gone) = self.book_read(|book| {
            let moved = book.resolve(tag).cloned();
            let gone = moved.as_ref().and_then(|m| book.gone(&m.id).cloned());
            (moved, gone)
        });
        let moved = moved.ok_or_else(|| {
            err(
                404,
                format!(
                    "no tag {tag}: see GET /tags/{} for the tags of the name",
                    tag.name
                ),
            )
        })?;
        if !may_see(grant, &moved.id) {
            return Err(err(
                403,
                format!(
                    "token {:?} may not fetch the asset {tag} points at",
                    grant.map(|g| g.name.as_str()).unwrap_or_default()
                ),
            ));
        }
        if let Some(gone) = gone {
            return Err(err(
                410,
                format!(
                    "{tag} points at asset {}, which was unpublished at {} by {}; move the tag (peer_client tag {tag} ID)",
                    moved.id,
                    httpdate_of(gone.at),
                    gone.by
                ),
            ));
        }
        Ok(TagAnswer {
            name: tag.name.clone(),
            tag: tag.tag.clone(),
            id: moved.id.clone(),
            moved,
            previous: None,
        })
    }

    /// `GET /tags/NAME`: its tags whose asset the grant may fetch, each with the moves to
    /// assets it may fetch.
    fn history(&self, name: &str, grant: Option<&Grant>) -> Result<Reply, HttpError> {
        let tags = self.book_read(|book| {
            book.names.get(name).map(|tags| {
                tags.iter()
                    .filter_map(|(tag, t)| {
                        let current = t.current()?;
                        may_see(grant, &current.id).then(|| TagHistory {
                            tag: tag.clone(),
                            id: current.id.clone(),
                            unpublished: book.gone(&current.id).cloned(),
                            history: t
                                .history
                                .iter()
                                .filter(|m| may_see(grant, &m.id))
                                .cloned()
                                .collect(),
                        })
                    })
                    .collect::<Vec<_>>()
            })
        });
        match tags {
            Some(tags) if !tags.is_empty() => Ok(json(
                200,
                &NameAnswer {
                    name: name.to_string(),
                    tags,
                },
            )),
            _ => Err(err(404, format!("no tags of name {name:?}"))),
        }
    }

    /// `PUT /tags/NAME:TAG`: points the tag at a published asset the grant may fetch.
    fn move_tag(
        &self,
        tag: &TagRef,
        id: &AssetId,
        grant: Option<&Grant>,
        remote: Option<SocketAddr>,
        token: Option<&str>,
    ) -> Result<Reply, HttpError> {
        self.authorize(token, Action::Fetch(id))?;
        self.published(id)?;
        let by = actor(grant, remote);
        let at = unix_now();
        let previous = self
            .book_update(|b| b.move_tag(tag, id, at, &by))
            .map_err(storage_failed)?
            .map_err(full)?;
        let moved = self
            .book_read(|b| b.resolve(tag).cloned())
            .expect("just moved");
        Ok(json(
            200,
            &TagAnswer {
                name: tag.name.clone(),
                tag: tag.tag.clone(),
                id: id.to_string(),
                moved,
                previous,
            },
        ))
    }

    /// `DELETE /assets/ID` (the admin right; see routes).
    pub(super) fn unpublish_route(
        &self,
        id: &str,
        token: Option<&str>,
        remote: Option<SocketAddr>,
    ) -> Result<Reply, HttpError> {
        let grant = self.authorize(token, Action::Admin)?;
        let id = parse_id(id)?;
        if self.catalog.get(&id).is_none() {
            return Err(self.missing(&id));
        }
        let answer = self
            .unpublish(&id, &actor(grant.as_deref(), remote))
            .map_err(|e| err(500, format!("unpublishing {id} failed: {e:#}")))?;
        Ok(json(200, &answer))
    }

    /// Unpublishes `id`: recorded first (durably), then the manifest removed and the swarm
    /// dropped, so that a crash between leaves a record the next start completes
    /// ([`State::finish_unpublishing`]), never a forgotten asset its peers keep serving.
    pub(super) fn unpublish(&self, id: &AssetId, by: &str) -> Result<UnpublishAnswer> {
        let at = unix_now();
        let tags = self.book_update(|b| b.unpublish(id, at, by))?;
        self.catalog.remove(id)?;
        self.swarms.write_now().remove(id);
        // Other trackers on the same Redis stop adopting it; those that hold it already
        // find its manifest gone from Redis and the book saying why (`shared_meta`).
        if let Some(shared) = &self.shared {
            shared
                .forget(id)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        }
        log::info!(
            "unpublished {id} (by {by}); tags pointing at it: {}",
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            }
        );
        Ok(UnpublishAnswer {
            id: id.to_string(),
            unpublished: Unpublished {
                at,
                by: by.to_string(),
            },
            tags,
        })
    }
}

/// Whether `grant` (`None`: open mode) may see an asset id named in the book.
fn may_see(grant: Option<&Grant>, id: &str) -> bool {
    grant.is_none_or(|g| g.may_fetch_all() || id.parse().is_ok_and(|id| g.may_fetch(&id)))
}

fn full(_: MoveError) -> HttpError {
    err(
        507,
        format!("the tracker holds {MAX_TAGS} tags already; move an existing tag instead"),
    )
}

/// A Unix time as an HTTP date, for messages.
fn httpdate_of(at: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> AssetId {
        AssetId([n; 32])
    }

    fn tag(text: &str) -> TagRef {
        text.parse().unwrap()
    }

    #[test]
    fn a_tag_moves_and_keeps_a_bounded_history() {
        let mut book = Book::default();
        let latest = tag("ci/app");
        assert_eq!(book.move_tag(&latest, &id(1), 10, "ci"), Ok(None));
        assert_eq!(
            book.move_tag(&latest, &id(2), 20, "ci"),
            Ok(Some(id(1).to_string()))
        );
        // To where it points already: no new move.
        assert_eq!(
            book.move_tag(&latest, &id(2), 30, "ci"),
            Ok(Some(id(2).to_string()))
        );
        let moved = book.resolve(&latest).unwrap();
        assert_eq!(
            (moved.id.clone(), moved.at, moved.by.as_str()),
            (id(2).to_string(), 20, "ci")
        );
        assert_eq!(book.names["ci/app"]["latest"].history.len(), 2);
        assert!(book.resolve(&tag("ci/app:v1")).is_none());
        assert!(book.resolve(&tag("ci/other")).is_none());
        for n in 0..100u8 {
            book.move_tag(&latest, &id(n), 100 + u64::from(n), "ci")
                .unwrap();
        }
        let history = &book.names["ci/app"]["latest"].history;
        assert_eq!(history.len(), MAX_HISTORY);
        assert_eq!(history.last().unwrap().id, id(99).to_string());
        assert_eq!(book.tagged(), HashSet::from([id(99)]));
    }

    #[test]
    fn the_number_of_tags_is_bounded() {
        let mut book = Book::default();
        for n in 0..MAX_TAGS {
            book.move_tag(&tag(&format!("n{}:t{n}", n % 7)), &id(1), 1, "x")
                .unwrap();
        }
        assert_eq!(
            book.move_tag(&tag("new:t"), &id(1), 1, "x"),
            Err(MoveError::Full)
        );
        // An existing tag still moves.
        assert!(book.move_tag(&tag("n0:t0"), &id(2), 2, "x").is_ok());
    }

    #[test]
    fn unpublishing_names_the_tags_and_a_publish_undoes_it() {
        let mut book = Book::default();
        book.move_tag(&tag("ci/app"), &id(1), 1, "ci").unwrap();
        book.move_tag(&tag("ci/app:v1"), &id(1), 1, "ci").unwrap();
        book.move_tag(&tag("ci/lib"), &id(2), 1, "ci").unwrap();
        let tags = book.unpublish(&id(1), 5, "ops");
        assert_eq!(tags, vec!["ci/app:latest", "ci/app:v1"]);
        assert_eq!(book.gone(&id(1).to_string()).unwrap().by, "ops");
        assert_eq!(book.unpublished_ids(), vec![id(1)]);
        assert!(book.republished(&id(1)));
        assert!(!book.republished(&id(1)));
        assert!(book.gone(&id(1).to_string()).is_none());
        for n in 0..=MAX_UNPUBLISHED as u64 {
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&n.to_be_bytes());
            book.unpublish(&AssetId(raw), n, "retention");
        }
        assert_eq!(book.unpublished.len(), MAX_UNPUBLISHED);
        assert!(
            book.gone(&AssetId([0; 32]).to_string()).is_none(),
            "the oldest goes"
        );
    }

    #[test]
    fn the_book_survives_a_reopen_and_a_damaged_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let tags = Tags::open(dir.path()).unwrap();
        tags.update(|b| b.move_tag(&tag("ci/app"), &id(1), 1, "ci"))
            .unwrap()
            .unwrap();
        tags.update(|b| b.unpublish(&id(3), 2, "ops")).unwrap();
        let again = Tags::open(dir.path()).unwrap();
        assert_eq!(again.read(|b| b.clone()), tags.read(|b| b.clone()));
        fs::write(dir.path().join("tags.json"), "{\"names\": [").unwrap();
        let e = format!("{:#}", Tags::open(dir.path()).unwrap_err());
        assert!(e.contains("tags.json is damaged"), "{e}");
    }

    #[test]
    fn a_publish_query_is_a_tag_or_refused() {
        assert_eq!(tag_query("/assets").unwrap(), None);
        assert_eq!(
            tag_query("/assets?tag=ci/app:v1").unwrap(),
            Some(tag("ci/app:v1"))
        );
        assert_eq!(
            tag_query("/assets?tag=ci%2Fapp%3Av1").unwrap(),
            Some(tag("ci/app:v1"))
        );
        assert_eq!(tag_query("/assets?tag=../x").unwrap_err().status, 400);
        assert_eq!(tag_query("/assets?other=1").unwrap_err().status, 400);
        assert_eq!(tag_query("/assets?tag=a&tag=b").unwrap_err().status, 400);
    }
}
