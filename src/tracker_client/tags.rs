//! The client side of names, tags and unpublishing: resolve `NAME:TAG` to an id, move a
//! tag, publish with a tag, list a name's tags, unpublish an asset.

use anyhow::{Result, bail};

use super::TrackerClient;
use crate::api::PublishResponse;
use crate::crypt::ContentKey;
use crate::manifest::{AssetId, Manifest};
use crate::names::{NameAnswer, TagAnswer, TagRef, TagRequest, UnpublishAnswer};

impl TrackerClient {
    /// Where `tag` points (`GET /tags/NAME:TAG`, one round trip). A tag pointing at an
    /// unpublished asset is refused with 410 and says so.
    pub fn resolve(&self, tag: &TagRef) -> Result<AssetId> {
        let url = format!("{}/tags/{tag}", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        let answer: TagAnswer = self.json(response, "resolve a tag")?;
        match answer.id.parse() {
            Ok(id) => Ok(id),
            Err(e) => bail!("the tracker resolved {tag} to {:?}: {e}", answer.id),
        }
    }

    /// Points `tag` at `id` (`PUT /tags/NAME:TAG`); the answer names the previous id.
    pub fn tag(&self, tag: &TagRef, id: &AssetId) -> Result<TagAnswer> {
        let url = format!("{}/tags/{tag}", self.base());
        let body = serde_json::to_string(&TagRequest { id: id.to_string() })
            .expect("a tag request serializes");
        let response = self.call(
            self.agent.request("PUT", &url),
            Some(("application/json", &body)),
        )?;
        self.json(response, "move a tag")
    }

    /// Publishes `manifest` (with the content key of an encrypted asset, under the same
    /// rule as [`TrackerClient::publish_keyed`]) and points `tag` at it in one request
    /// (`POST /assets?tag=`): a tag the token may not move publishes nothing.
    pub fn publish_tagged(
        &self,
        manifest: &Manifest,
        key: Option<&ContentKey>,
        tag: &TagRef,
    ) -> Result<PublishResponse> {
        self.check_key_channel(manifest, key)?;
        let url = format!("{}/assets?tag={tag}", self.base());
        self.post_manifest(&url, manifest, key)
    }

    /// The tags of `name`, each with its history (`GET /tags/NAME`).
    pub fn tags(&self, name: &str) -> Result<NameAnswer> {
        let url = format!("{}/tags/{name}", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        self.json(response, "list a name's tags")
    }

    /// Unpublishes `id` (`DELETE /assets/ID`, the admin right).
    pub fn unpublish(&self, id: &AssetId) -> Result<UnpublishAnswer> {
        let url = format!("{}/assets/{id}", self.base());
        let response = self.call(self.agent.delete(&url), None)?;
        self.json(response, "unpublish")
    }
}
