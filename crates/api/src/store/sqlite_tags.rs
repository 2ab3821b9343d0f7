//! Template tags in SQLite: `template_tags` maps `(template, tag)` to the build `name:tag`
//! starts sandboxes from. A template's tags go with it, a build's tags with the build
//! (`ON DELETE CASCADE`). The migration gives every template built before tags existed a
//! `default` tag on its newest successful build: that is the build its name already started.

use chrono::{DateTime, Utc};
use paddock_domain::TemplateName;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{exec, from_ms, query_one, to_ms};
use crate::store::{BuildId, StoreError, TagRecord, TagRemoval};

/// The schema of the tags migration.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE template_tags (
    template    TEXT NOT NULL REFERENCES built_templates(name) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    build_id    TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (template, tag)
) WITHOUT ROWID;
CREATE INDEX template_tags_build ON template_tags(build_id);
INSERT INTO template_tags (template, tag, build_id, created_at)
SELECT b.template, 'default', b.id, COALESCE(b.finished_at, b.updated_at)
FROM template_builds AS b
WHERE b.status = 'ready' AND b.id = (
    SELECT n.id FROM template_builds AS n
    WHERE n.template = b.template AND n.status = 'ready'
    ORDER BY n.created_at DESC, n.rowid DESC LIMIT 1
);
"#;

type RawTag = (String, String, String, i64);

fn tag_row(r: &Row<'_>) -> rusqlite::Result<RawTag> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode((template, tag, build, at): RawTag) -> Result<TagRecord, StoreError> {
    let corrupt = |column: &'static str, value: &str| StoreError::Corrupt {
        column,
        value: value.to_string(),
    };
    Ok(TagRecord {
        template: TemplateName::parse(&template)
            .map_err(|_| corrupt("template_tags.template", &template))?,
        build_id: BuildId::parse(&build)
            .ok_or_else(|| corrupt("template_tags.build_id", &build))?,
        tag,
        created_at: from_ms(at, "template_tags.created_at")?,
    })
}

/// The builds among `candidates` that no tag names any more.
fn untagged(tx: &Transaction<'_>, candidates: Vec<String>) -> Result<Vec<BuildId>, StoreError> {
    let mut out: Vec<BuildId> = Vec::new();
    for id in candidates {
        let named: bool = query_one(
            tx,
            "SELECT EXISTS (SELECT 1 FROM template_tags WHERE build_id = ?1)",
            [id.as_str()],
            |r| r.get(0),
        )?;
        if named {
            continue;
        }
        let id = BuildId::parse(&id).ok_or_else(|| StoreError::Corrupt {
            column: "template_tags.build_id",
            value: id.clone(),
        })?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn current_build(
    tx: &Transaction<'_>,
    template: &TemplateName,
    tag: &str,
) -> Result<Option<String>, StoreError> {
    Ok(query_one(
        tx,
        "SELECT build_id FROM template_tags WHERE template = ?1 AND tag = ?2",
        params![template.as_str(), tag],
        |r| r.get(0),
    )
    .optional()?)
}

/// See [`crate::Store::assign_tags`].
pub(super) fn assign(
    conn: &mut Connection,
    template: &TemplateName,
    build: &BuildId,
    tags: &[String],
    at: DateTime<Utc>,
) -> Result<Vec<BuildId>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut moved_from = Vec::new();
    for tag in tags {
        match current_build(&tx, template, tag)? {
            Some(old) if old == build.as_str() => continue,
            Some(old) => moved_from.push(old),
            None => {}
        }
        exec(
            &tx,
            "INSERT INTO template_tags (template, tag, build_id, created_at) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (template, tag) DO UPDATE SET build_id = excluded.build_id, \
             created_at = excluded.created_at",
            params![template.as_str(), tag, build.as_str(), to_ms(at)],
        )?;
    }
    let orphaned = untagged(&tx, moved_from)?;
    tx.commit()?;
    Ok(orphaned)
}

/// See [`crate::Store::remove_tags`].
pub(super) fn remove(
    conn: &mut Connection,
    template: &TemplateName,
    tags: &[String],
) -> Result<TagRemoval, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut lost = Vec::new();
    for tag in tags {
        match current_build(&tx, template, tag)? {
            Some(build) => lost.push(build),
            // Dropping the transaction rolls back the tags removed so far.
            None => return Ok(TagRemoval::UnknownTag(tag.clone())),
        }
        exec(
            &tx,
            "DELETE FROM template_tags WHERE template = ?1 AND tag = ?2",
            params![template.as_str(), tag],
        )?;
    }
    let orphaned = untagged(&tx, lost)?;
    tx.commit()?;
    Ok(TagRemoval::Removed { orphaned })
}

/// A template's tags, by tag.
pub(super) fn of_template(
    conn: &mut Connection,
    template: &TemplateName,
) -> Result<Vec<TagRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT template, tag, build_id, created_at FROM template_tags WHERE template = ?1 \
         ORDER BY tag",
    )?;
    let raws = stmt
        .query_map([template.as_str()], tag_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(decode).collect()
}

/// One tag of a template.
pub(super) fn one(
    conn: &mut Connection,
    template: &TemplateName,
    tag: &str,
) -> Result<Option<TagRecord>, StoreError> {
    query_one(
        conn,
        "SELECT template, tag, build_id, created_at FROM template_tags \
         WHERE template = ?1 AND tag = ?2",
        params![template.as_str(), tag],
        tag_row,
    )
    .optional()?
    .map(decode)
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::*;
    use crate::store::{BuildRecord, BuildStatus, Store, TeamId, TemplateDeletion};
    use paddock_domain::Resources;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        (dir, store)
    }

    fn at(ms: i64) -> DateTime<Utc> {
        from_ms(ms, "t").expect("time")
    }

    /// Requests a build of `name` and marks it ready.
    async fn ready_build(store: &SqliteStore, team: &TeamId, name: &str, ms: i64) -> BuildId {
        let b = BuildRecord {
            id: BuildId::generate(),
            template: TemplateName::parse(name).expect("name"),
            team_id: team.clone(),
            status: BuildStatus::Waiting,
            tags: vec!["default".into()],
            resources: Resources::default(),
            reason: None,
            created_at: at(ms),
            updated_at: at(ms),
            finished_at: None,
        };
        store.request_build(&b, at(0)).await.expect("request");
        assert!(store
            .set_build_status(&b.id, BuildStatus::Waiting, BuildStatus::Ready, None)
            .await
            .expect("cas"));
        b.id
    }

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn tags_move_between_builds_and_report_builds_left_untagged() {
        let (_dir, store) = open();
        let team = store.ensure_team("a").await.expect("team");
        let app = TemplateName::parse("app").expect("name");
        let one = ready_build(&store, &team, "app", 1_000).await;
        let two = ready_build(&store, &team, "app", 2_000).await;
        let none = store
            .assign_tags(&app, &one, &strings(&["default", "v1"]), at(10))
            .await
            .expect("assign");
        assert!(none.is_empty());
        // `default` moves to the second build; the first keeps `v1`.
        let orphaned = store
            .assign_tags(&app, &two, &strings(&["default", "v2"]), at(20))
            .await
            .expect("assign");
        assert!(orphaned.is_empty(), "{orphaned:?}");
        let tags = store.template_tags(&app).await.expect("list");
        let view: Vec<(&str, &BuildId, i64)> = tags
            .iter()
            .map(|t| (t.tag.as_str(), &t.build_id, t.created_at.timestamp_millis()))
            .collect();
        assert_eq!(
            view,
            [("default", &two, 20), ("v1", &one, 10), ("v2", &two, 20)]
        );
        // Assigning a tag to the build it already names changes nothing.
        store
            .assign_tags(&app, &two, &strings(&["v2"]), at(30))
            .await
            .expect("assign");
        assert_eq!(
            store
                .tag(&app, "v2")
                .await
                .expect("read")
                .expect("tag")
                .created_at,
            at(20)
        );
        // Moving `v1`, the first build's last tag, leaves it untagged.
        let orphaned = store
            .assign_tags(&app, &two, &strings(&["v1"]), at(40))
            .await
            .expect("assign");
        assert_eq!(orphaned, std::slice::from_ref(&one));
        assert_eq!(store.tag(&app, "nope").await.expect("read"), None);
    }

    #[tokio::test]
    async fn removing_is_all_or_nothing_and_tags_go_with_their_template() {
        let (_dir, store) = open();
        let team = store.ensure_team("a").await.expect("team");
        let app = TemplateName::parse("app").expect("name");
        let one = ready_build(&store, &team, "app", 1_000).await;
        store
            .assign_tags(&app, &one, &strings(&["default", "stable"]), at(10))
            .await
            .expect("assign");
        assert_eq!(
            store
                .remove_tags(&app, &strings(&["stable", "missing"]))
                .await
                .expect("remove"),
            TagRemoval::UnknownTag("missing".into())
        );
        assert_eq!(store.template_tags(&app).await.expect("list").len(), 2);
        assert_eq!(
            store
                .remove_tags(&app, &strings(&["stable"]))
                .await
                .expect("remove"),
            TagRemoval::Removed {
                orphaned: Vec::new()
            }
        );
        assert_eq!(
            store
                .remove_tags(&app, &strings(&["default"]))
                .await
                .expect("remove"),
            TagRemoval::Removed {
                orphaned: vec![one.clone()]
            }
        );
        store
            .assign_tags(&app, &one, &strings(&["default"]), at(20))
            .await
            .expect("assign");
        assert_eq!(
            store
                .delete_template_record(&team, &app)
                .await
                .expect("delete"),
            TemplateDeletion::Deleted
        );
        assert!(store.template_tags(&app).await.expect("list").is_empty());
    }

    #[test]
    fn the_migration_tags_the_newest_successful_build_of_older_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        let mut conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "foreign_keys", "ON")
            .expect("pragma");
        // Every migration before this one, and builds made under them.
        let before = super::super::MIGRATIONS
            .iter()
            .position(|m| *m == MIGRATION)
            .expect("listed");
        let tx = conn.transaction().expect("tx");
        for m in &super::super::MIGRATIONS[..before] {
            tx.execute_batch(m).expect("migrate");
        }
        tx.pragma_update(None, "user_version", before as i64)
            .expect("version");
        exec(
            &tx,
            "INSERT INTO teams (id, name, created_at) VALUES ('t', 't', 0)",
            [],
        )
        .expect("team");
        exec(
            &tx,
            "INSERT INTO built_templates (name, team_id, created_at) VALUES ('app', 't', 0)",
            [],
        )
        .expect("template");
        let ids = [
            BuildId::generate(),
            BuildId::generate(),
            BuildId::generate(),
        ];
        for (i, (id, status)) in ids.iter().zip(["ready", "ready", "error"]).enumerate() {
            exec(
                &tx,
                "INSERT INTO template_builds (id, template, team_id, status, cpu_count, \
                 memory_mb, disk_mb, pids_max, created_at, updated_at, finished_at) \
                 VALUES (?1, 'app', 't', ?2, 2, 512, 2048, 1024, ?3, ?3, ?3)",
                params![id.as_str(), status, 1_000 * (i as i64 + 1)],
            )
            .expect("build");
        }
        tx.commit().expect("commit");
        drop(conn);
        let store = SqliteStore::open(&path).expect("migrate");
        let app = TemplateName::parse("app").expect("name");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let tags = rt.block_on(store.template_tags(&app)).expect("list");
        assert_eq!(tags.len(), 1, "{tags:?}");
        assert_eq!(
            (tags[0].tag.as_str(), &tags[0].build_id, tags[0].created_at),
            ("default", &ids[1], at(2_000)),
            "the newest ready build, not the failed one after it"
        );
    }
}
