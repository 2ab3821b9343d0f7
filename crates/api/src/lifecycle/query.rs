//! Reading sandboxes: one (`get`) or a filtered page (`list`), with the opaque `nextToken`
//! cursor: URL-safe base64 of `<started_at ms>__<sandbox id>` of the last row returned.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use paddock_domain::{SandboxId, SandboxState};

use super::{Core, Error};
use crate::store::{Cursor, ListQuery, Order, SandboxRecord, TeamId};

/// The largest (and default) page size.
pub const MAX_PAGE: u32 = 100;

/// A listing request, decoded from the query string.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// States to include; `None` = running and paused.
    pub states: Option<Vec<SandboxState>>,
    /// Exact metadata pairs to match.
    pub metadata: Vec<(String, String)>,
    /// Template name or alias.
    pub template: Option<String>,
    /// Only sandboxes started after this.
    pub started_after: Option<DateTime<Utc>>,
    /// Sort order.
    pub order: Order,
    /// Page size (1..=100, default 100).
    pub limit: Option<i64>,
    /// Continuation token from a previous page.
    pub next_token: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The sandboxes of this page.
    pub sandboxes: Vec<SandboxRecord>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
    /// How many of the team's sandboxes are running.
    pub total_running: u64,
}

/// Encodes the cursor after `rec`.
pub fn encode_token(rec: &SandboxRecord) -> String {
    let raw = format!("{}__{}", rec.started_at.timestamp_millis(), rec.id);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a `nextToken`.
pub fn decode_token(token: &str) -> Result<Cursor, Error> {
    let invalid = || Error::Invalid(format!("nextToken {token:?} is not a valid page token"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let raw = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (ms, id) = raw.split_once("__").ok_or_else(invalid)?;
    let started_at_ms = ms.parse::<i64>().map_err(|_| invalid())?;
    let id = SandboxId::parse(id).map_err(|_| invalid())?;
    Ok(Cursor {
        started_at_ms,
        id: id.to_string(),
    })
}

impl Core {
    /// One of the team's running or paused sandboxes.
    pub(crate) async fn get(&self, team: &TeamId, id: &SandboxId) -> Result<SandboxRecord, Error> {
        self.visible(team, id).await
    }

    /// A page of the team's sandboxes.
    pub(crate) async fn list(&self, team: &TeamId, params: ListParams) -> Result<Page, Error> {
        let limit = match params.limit {
            None => MAX_PAGE,
            Some(n) if (1..=i64::from(MAX_PAGE)).contains(&n) => n as u32,
            Some(n) => {
                return Err(Error::Invalid(format!(
                    "limit must be between 1 and {MAX_PAGE}, got {n}"
                )))
            }
        };
        let cursor = params
            .next_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(decode_token);
        let states = params
            .states
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec![SandboxState::Running, SandboxState::Paused]);
        // Only running and paused sandboxes exist for clients; other states match nothing.
        let states: Vec<SandboxState> = states
            .into_iter()
            .filter(|s| matches!(s, SandboxState::Running | SandboxState::Paused))
            .collect();
        let total_running = self
            .store
            .count_in_state(team, SandboxState::Running)
            .await?;
        if states.is_empty() {
            return Ok(Page {
                sandboxes: Vec::new(),
                next_token: None,
                total_running,
            });
        }
        let query = ListQuery {
            team_id: team.clone(),
            states,
            metadata: params.metadata,
            template: params.template,
            started_after: params.started_after,
            order: params.order,
            cursor: cursor.transpose()?,
            limit: limit + 1,
        };
        let mut sandboxes = self.store.list_sandboxes(&query).await?;
        let next_token = if sandboxes.len() > limit as usize {
            sandboxes.truncate(limit as usize);
            sandboxes.last().map(encode_token)
        } else {
            None
        };
        Ok(Page {
            sandboxes,
            next_token,
            total_running,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TeamId;
    use chrono::TimeZone;
    use paddock_domain::{Resources, TemplateName};

    fn rec(ms: i64) -> SandboxRecord {
        let t = Utc.timestamp_millis_opt(ms).single().expect("valid");
        SandboxRecord {
            id: SandboxId::generate(),
            team_id: TeamId::generate(),
            template: TemplateName::parse("base").expect("valid"),
            alias: None,
            state: SandboxState::Running,
            metadata: Default::default(),
            access_token: String::new(),
            started_at: t,
            end_at: t,
            resources: Resources::default(),
            client_id: String::new(),
            end_reason: None,
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let r = rec(1_700_000_123_456);
        let token = encode_token(&r);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let cursor = decode_token(&token).expect("decodes");
        assert_eq!(
            cursor,
            Cursor {
                started_at_ms: 1_700_000_123_456,
                id: r.id.to_string()
            }
        );
    }

    #[test]
    fn bad_tokens_are_invalid_input() {
        for bad in ["", "!!!", "bm90aGluZw", &URL_SAFE_NO_PAD.encode("12__../x")] {
            let err = decode_token(bad).expect_err("rejected");
            assert!(
                matches!(err, Error::Invalid(ref m) if m.contains("nextToken")),
                "{bad}"
            );
        }
    }
}
