//! Template tags (E2B's `name:tag`), independent of HTTP. A tag of a team's built template
//! names one successful build; `name` alone means `name:default`, and `name:<buildID>` names a
//! build directly.
//!
//! On the node, every successful build is published as a hidden template of its own,
//! `build-<build id without dashes>` ([`build_template`]), over the build's layers (no files
//! are copied). The template's own name is the build its `default` tag names: a build that
//! carries `default` publishes it, assigning `default` to another build republishes it, and
//! removing `default` deletes it. As on E2B, a template whose builds never carried `default`
//! (only `name:v1` was built) has no `name`: creating from it answers 404 until `default` is
//! assigned. When a tag moves off a build (or is removed) and no tag names the build any more,
//! its hidden template is deleted; its layers go with the next collection unless other
//! templates or sandboxes use them.
//!
//! Tag changes take [`super::build::Builds::admin`], so the store's tags and the node's
//! templates change together, one change at a time.

use chrono::Utc;
use paddock_domain::TemplateName;

use super::build::{template_ref, valid_tag, Owner, MAX_TAG};
use super::{Core, Error};
use crate::store::{BuildId, BuildRecord, BuildStatus, TagRecord, TagRemoval, TeamId};

/// Prefix of a build's hidden node template (followed by the build id's 32 hex digits).
pub const BUILD_PREFIX: &str = "build-";
/// The tag `name` alone means.
pub const DEFAULT_TAG: &str = "default";

/// The hidden node template of build `id`: `build-` and the id's 32 hex digits.
pub fn build_template(id: &BuildId) -> TemplateName {
    TemplateName::parse(&format!("{BUILD_PREFIX}{}", id.as_str().replace('-', "")))
        .expect("build- and 32 hex digits is a valid template name")
}

/// Whether `name` has the form of a build's hidden template (`build-` + 32 hex digits).
pub fn is_build_template(name: &TemplateName) -> bool {
    name.as_str()
        .strip_prefix(BUILD_PREFIX)
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where a template reference leads for a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The template's name (what sandboxes report as their `templateID`).
    pub(crate) name: TemplateName,
    /// The node template to start from: the name itself, or a build's hidden template.
    pub(crate) node_template: TemplateName,
    /// Default limits of the node template's sandboxes.
    pub(crate) resources: paddock_domain::Resources,
}

/// The tags of a template, as `GET /templates/{id}/tags` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagsOf {
    /// One of the team's built templates, with its tags (by tag).
    Built(Vec<TagRecord>),
    /// A template that was not built through the API (a node template or one of the team's
    /// snapshots): its one version is its `default`.
    Made(TemplateName),
}

/// Checks and deduplicates tags (in their order); at least one.
fn checked_tags(tags: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        if !valid_tag(&t) {
            return Err(Error::Invalid(format!(
                "invalid tag {t:?}: 1 to {MAX_TAG} characters of A-Z, a-z, 0-9, '.', '_' and '-'"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("tags must name at least one tag".into()));
    }
    Ok(out)
}

impl Core {
    /// Resolves a reference (`name`, `name:tag`, `name:<buildID>`, `namespace/name:tag`) as
    /// creates and build bases use it: `name` and `name:default` are the node template
    /// `name`; another tag (of one of the team's built templates) is the hidden template of
    /// the build it names. Other teams' and hidden templates, unknown tags and templates the
    /// node does not have are [`Error::TemplateNotFound`] naming `raw`.
    pub(crate) async fn resolve_template(
        &self,
        team: &TeamId,
        raw: &str,
    ) -> Result<Resolved, Error> {
        let not_found = || Error::TemplateNotFound(raw.to_string());
        let (name, tag) = template_ref(raw).ok_or_else(not_found)?;
        let owner = self.template_owner(&name).await?;
        match &owner {
            Owner::Hidden => return Err(not_found()),
            o if o.team().is_some_and(|t| t != team) => return Err(not_found()),
            _ => {}
        }
        let node_template = match tag {
            None | Some(DEFAULT_TAG) => name.clone(),
            Some(tag) => {
                if !matches!(owner, Owner::Built(_)) {
                    return Err(not_found());
                }
                let build = self.tagged_build(&name, tag).await?.ok_or_else(not_found)?;
                self.node_template_of(&name, &build.id)
                    .await?
                    .ok_or_else(not_found)?
            }
        };
        let Some(info) = self.node.template(&node_template).await? else {
            return Err(match self.preparing(&node_template) {
                Some(why) => Error::TemplatePreparing(why),
                None => not_found(),
            });
        };
        Ok(Resolved {
            name,
            node_template,
            resources: info.resources,
        })
    }

    /// The successful build of template `name` that `tag` names: a tag, or a build id.
    async fn tagged_build(
        &self,
        name: &TemplateName,
        tag: &str,
    ) -> Result<Option<BuildRecord>, Error> {
        let id = match self.store.tag(name, tag).await? {
            Some(t) => t.build_id,
            None => match BuildId::parse(tag) {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        Ok(self
            .store
            .build(&id)
            .await?
            .filter(|b| &b.template == name && b.status == BuildStatus::Ready))
    }

    /// The node template holding build `id` of template `name`: its hidden template, else
    /// (a build made before tags existed) the template itself if `default` names the build.
    async fn node_template_of(
        &self,
        name: &TemplateName,
        id: &BuildId,
    ) -> Result<Option<TemplateName>, Error> {
        let hidden = build_template(id);
        if self.node.template(&hidden).await?.is_some() {
            return Ok(Some(hidden));
        }
        let is_default = self
            .store
            .tag(name, DEFAULT_TAG)
            .await?
            .is_some_and(|t| &t.build_id == id);
        if is_default && self.node.template(name).await?.is_some() {
            return Ok(Some(name.clone()));
        }
        Ok(None)
    }

    /// Deletes the hidden templates of builds no tag names any more (failures are logged:
    /// a template left behind costs disk, not correctness).
    async fn drop_build_templates(&self, orphaned: &[BuildId]) {
        for id in orphaned {
            let hidden = build_template(id);
            match self.node.delete_template(&hidden).await {
                Ok(_) => {
                    tracing::info!(build_id = %id, template = %hidden, "untagged build's template deleted")
                }
                Err(e) => {
                    tracing::warn!(build_id = %id, template = %hidden, error = %e, "deleting an untagged build's template failed")
                }
            }
        }
    }

    /// Points `tags` of template `name` at `build`, whose hidden template `source` is on the
    /// node; republishes `name` when `default` is among them and drops the hidden templates
    /// of builds left untagged. The caller holds the admin lock.
    async fn move_tags(
        &self,
        name: &TemplateName,
        build: &BuildId,
        source: &TemplateName,
        tags: &[String],
    ) -> Result<(), Error> {
        let orphaned = self
            .store
            .assign_tags(name, build, tags, Utc::now())
            .await?;
        if tags.iter().any(|t| t == DEFAULT_TAG) && source != name {
            self.node.copy_template(source, name).await?;
        }
        self.drop_build_templates(&orphaned).await;
        Ok(())
    }

    /// Tags a build that just succeeded (its hidden template is on the node) with the tags it
    /// was requested with, publishing the template's name if `default` is one of them.
    pub(crate) async fn tag_finished_build(&self, build: &BuildRecord) -> Result<(), Error> {
        let _admin = self.builds.admin.lock().await;
        let hidden = build_template(&build.id);
        self.move_tags(&build.template, &build.id, &hidden, &build.tags)
            .await
    }

    /// `POST /templates/tags`: assigns `tags` to the build `target` (`name:tag`, `name` =
    /// `name:default`, or `name:<buildID>`) names; returns the build and the tags assigned.
    pub(crate) async fn assign_tags(
        &self,
        team: &TeamId,
        target: &str,
        tags: Vec<String>,
    ) -> Result<(BuildId, Vec<String>), Error> {
        let tags = checked_tags(tags)?;
        let not_found = || Error::TemplateNotFound(target.to_string());
        let (name, tag) = template_ref(target).ok_or_else(not_found)?;
        let _admin = self.builds.admin.lock().await;
        self.own_built_template(team, &name, target).await?;
        let build = self
            .tagged_build(&name, tag.unwrap_or(DEFAULT_TAG))
            .await?
            .ok_or_else(not_found)?;
        let source = self
            .node_template_of(&name, &build.id)
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "the files of build '{}' are no longer on the node",
                    build.id
                ))
            })?;
        // Give a build known only by the template's name (made before tags existed) its own
        // template, so it keeps its files when `default` moves on.
        let hidden = build_template(&build.id);
        if source != hidden {
            self.node.copy_template(&source, &hidden).await?;
        }
        self.move_tags(&name, &build.id, &hidden, &tags).await?;
        tracing::info!(template = %name, build_id = %build.id, tags = ?tags, "tags assigned");
        Ok((build.id, tags))
    }

    /// `DELETE /templates/tags`: removes `tags` from template `raw` (all, or none when one
    /// is not assigned: 404). Removing `default` removes the template's name from the node
    /// (`name` is 404 until `default` is assigned again); builds left untagged lose their
    /// hidden template.
    pub(crate) async fn remove_tags(
        &self,
        team: &TeamId,
        raw: &str,
        tags: Vec<String>,
    ) -> Result<(), Error> {
        let tags = checked_tags(tags)?;
        let (name, _) = template_ref(raw).ok_or_else(|| Error::TemplateNotFound(raw.into()))?;
        let _admin = self.builds.admin.lock().await;
        self.own_built_template(team, &name, raw).await?;
        match self.store.remove_tags(&name, &tags).await? {
            TagRemoval::UnknownTag(tag) => Err(Error::TemplateNotFound(format!("{name}:{tag}"))),
            TagRemoval::Removed { orphaned } => {
                if tags.iter().any(|t| t == DEFAULT_TAG) {
                    self.node.delete_template(&name).await?;
                }
                self.drop_build_templates(&orphaned).await;
                tracing::info!(template = %name, tags = ?tags, "tags removed");
                Ok(())
            }
        }
    }

    /// `GET /templates/{id}/tags`: the tags of template `raw` as the team sees it.
    pub(crate) async fn template_tags(&self, team: &TeamId, raw: &str) -> Result<TagsOf, Error> {
        let not_found = || Error::TemplateNotFound(raw.to_string());
        let (name, _) = template_ref(raw).ok_or_else(not_found)?;
        match self.template_owner(&name).await? {
            Owner::Built(t) if &t == team => {
                Ok(TagsOf::Built(self.store.template_tags(&name).await?))
            }
            Owner::Public => Ok(TagsOf::Made(name)),
            Owner::Snapshot(t) if &t == team => Ok(TagsOf::Made(name)),
            _ => Err(not_found()),
        }
    }

    /// Checks that `name` is one of the team's built templates: other teams' and hidden
    /// templates are 404 (`raw` as asked), node templates and snapshots have no tags to
    /// change (400).
    async fn own_built_template(
        &self,
        team: &TeamId,
        name: &TemplateName,
        raw: &str,
    ) -> Result<(), Error> {
        match self.template_owner(name).await? {
            Owner::Built(t) if &t == team => Ok(()),
            Owner::Public if self.node.template(name).await?.is_some() => {
                Err(Error::Invalid(format!(
                    "'{name}' is a template of the node: only templates built through the API \
                     have tags"
                )))
            }
            Owner::Snapshot(t) if &t == team => Err(Error::Invalid(format!(
                "'{name}' is a snapshot: only templates built through the API have tags"
            ))),
            _ => Err(Error::TemplateNotFound(raw.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_templates_are_hidden_names_of_32_hex_digits() {
        let id = BuildId::generate();
        let t = build_template(&id);
        assert_eq!(t.as_str().len(), BUILD_PREFIX.len() + 32);
        assert!(is_build_template(&t));
        assert!(super::super::build::is_hidden_template(&t));
        for shown in ["build-tools", "build-0123", "builds", "build"] {
            let n = TemplateName::parse(shown).expect("name");
            assert!(!is_build_template(&n), "{shown}");
            assert!(!super::super::build::is_hidden_template(&n), "{shown}");
        }
    }

    #[test]
    fn tags_are_checked_and_deduplicated() {
        assert_eq!(
            checked_tags(vec!["v1".into(), "stable".into(), "v1".into()]).expect("ok"),
            ["v1", "stable"]
        );
        assert!(checked_tags(Vec::new()).is_err());
        assert!(checked_tags(vec!["a b".into()]).is_err());
    }
}
