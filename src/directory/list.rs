//! Listing users and groups: filter in SQL, total count with the same condition, then one page
//! by index (`startIndex`/`count`, RFC 7644 §3.4.2.4) or by cursor (RFC 9865).
//!
//! Order is always total, so pages neither skip nor repeat: insertion order (`seq`) by default,
//! else (sort value with NULLs last, `seq`). Cursor pages continue after the last row seen
//! (keyset), so rows inserted meanwhile never shift what comes next. A cursor is opaque
//! base64url JSON naming the last row's sort value and `seq`, and the order it belongs to.
//!
//! Not here: building the filter condition (`sql_filter.rs`), rendering a ListResponse (`http/`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sqlx::Row;

use super::sql_filter::{
    bind_args, filter_sql, sort_sql, SortKey, SortTy, SqlBuilder, SqlValue, Target,
};
use super::{stored_from_cells, DirError, Directory, ListQuery, Page, STORED_COLS};
use crate::scim::filter::AttrPath;
use crate::scim::schema::ResourceKind;
use crate::scim::ScimError;
use crate::store::{cell, Cell, StoreError};

/// Deepest `startIndex` offset read on the caller's thread (`Db::read_rows`); deeper pages
/// read through the pool.
const INLINE_OFFSET_MAX: i64 = 1000;

impl Directory {
    pub async fn list_users(&self, tenant: &str, q: &ListQuery) -> Result<Page, DirError> {
        self.list(ResourceKind::User, tenant, q).await
    }

    pub async fn list_groups(&self, tenant: &str, q: &ListQuery) -> Result<Page, DirError> {
        self.list(ResourceKind::Group, tenant, q).await
    }

    async fn list(
        &self,
        kind: ResourceKind,
        tenant: &str,
        q: &ListQuery,
    ) -> Result<Page, DirError> {
        let (table, target) = match kind {
            ResourceKind::User => ("users", Target::Users),
            ResourceKind::Group => ("groups", Target::Groups),
        };
        let mut b = SqlBuilder::new(self.db.engine);
        b.text(tenant);
        let mut cond = "r.tenant_id = $1".to_string();
        if let Some(f) = &q.filter {
            cond = format!("{cond} AND {}", filter_sql(&mut b, target, f)?);
        }
        let n_filter_args = b.args.len();
        let count_sql = format!("SELECT COUNT(*) FROM {table} r WHERE {cond}");
        let filter_args = b.args[..n_filter_args].to_vec();
        let pool = self.db.pool.clone();
        let count_all = move || async move {
            let total: i64 = bind_args(sqlx::query(&count_sql), &filter_args)
                .fetch_one(&pool)
                .await?
                .try_get(0)?;
            Ok::<u64, DirError>(u64::try_from(total).unwrap_or(0))
        };

        let sort = match &q.sort_by {
            Some(p) => Some(sort_sql(&mut b, kind, p)?),
            None => None,
        };
        let order = match &sort {
            None => "r.seq ASC".to_string(),
            Some(k) => {
                let dir = if q.descending { "DESC" } else { "ASC" };
                format!("({e} IS NULL) ASC, {e} {dir}, r.seq ASC", e = k.expr)
            }
        };
        let key_col = match &sort {
            Some(k) => k.expr.clone(),
            None => "NULL".to_string(),
        };
        let fingerprint = fingerprint(q.sort_by.as_ref(), q.descending);

        if q.count == 0 {
            return Ok(Page {
                total_results: count_all().await?,
                items: Vec::new(),
                next_cursor: None,
            });
        }
        let count = i64::try_from(q.count).unwrap_or(i64::MAX - 1);

        match &q.cursor {
            None => {
                let offset = i64::try_from(q.start_index.max(1) - 1).unwrap_or(i64::MAX);
                let lim = b.arg(SqlValue::Int(count));
                let off = b.arg(SqlValue::Int(offset));
                let sql = format!(
                    "SELECT {STORED_COLS} FROM {table} r WHERE {cond} ORDER BY {order} \
                     LIMIT {lim} OFFSET {off}"
                );
                // A deep OFFSET walks every row before it: keep that off the caller's thread.
                let rows = if offset <= INLINE_OFFSET_MAX {
                    self.db.read_rows(&sql, &b.args).await?
                } else {
                    self.db.read_rows_pooled(&sql, &b.args).await?
                };
                let items: Vec<super::StoredResource> = rows
                    .iter()
                    .map(|r| stored_from_cells(r))
                    .collect::<Result<_, _>>()?;
                // A first page that is not full holds every match: that is the total, and the
                // lookups IdPs send before every write (`userName eq "…"`) need no COUNT.
                let total_results = if offset == 0 && (items.len() as u64) < q.count {
                    items.len() as u64
                } else {
                    count_all().await?
                };
                Ok(Page {
                    total_results,
                    items,
                    next_cursor: None,
                })
            }
            Some(cursor) => {
                let mut page_cond = cond.clone();
                if !cursor.is_empty() {
                    let c = decode_cursor(cursor, &fingerprint)?;
                    page_cond = format!(
                        "{page_cond} AND {}",
                        keyset(&mut b, sort.as_ref(), q.descending, &c)?
                    );
                }
                let lim = b.arg(SqlValue::Int(count.saturating_add(1)));
                let sql = format!(
                    "SELECT {STORED_COLS}, r.seq, {key_col} FROM {table} r WHERE {page_cond} \
                     ORDER BY {order} LIMIT {lim}"
                );
                // Keyset pages seek straight to their first row.
                let rows = self.db.read_rows(&sql, &b.args).await?;
                let more = rows.len() as u64 > q.count;
                let rows = &rows[..rows.len().min(q.count as usize)];
                let items = rows
                    .iter()
                    .map(|r| stored_from_cells(r))
                    .collect::<Result<Vec<_>, _>>()?;
                let next_cursor = match (more, rows.last()) {
                    (true, Some(last)) => Some(encode_cursor(last, sort.as_ref(), &fingerprint)?),
                    _ => None,
                };
                Ok(Page {
                    total_results: count_all().await?,
                    items,
                    next_cursor,
                })
            }
        }
    }
}

/// Which order a cursor belongs to: the sort attribute as written (letter case ignored) and
/// the direction.
fn fingerprint(sort_by: Option<&AttrPath>, descending: bool) -> String {
    match sort_by {
        None => String::new(),
        Some(p) => {
            let mut s = String::new();
            if let Some(u) = &p.urn {
                s.push_str(u);
                s.push(':');
            }
            s.push_str(&p.attr);
            if let Some(x) = &p.sub_attr {
                s.push('.');
                s.push_str(x);
            }
            format!(
                "{}|{}",
                s.to_lowercase(),
                if descending { "d" } else { "a" }
            )
        }
    }
}

struct Cursor {
    seq: i64,
    key: Value,
}

fn bad_cursor(detail: &str) -> DirError {
    DirError::Invalid(ScimError::bad(
        crate::scim::ScimType::InvalidCursor,
        format!("invalid cursor: {detail}; start again without a cursor value"),
    ))
}

fn decode_cursor(text: &str, fingerprint: &str) -> Result<Cursor, DirError> {
    if text.len() > 4096 {
        return Err(bad_cursor("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| bad_cursor("not base64url"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad_cursor("unreadable"))?;
    let seq = v
        .get("s")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad_cursor("unreadable"))?;
    let o = v.get("o").and_then(Value::as_str).unwrap_or("");
    if o != fingerprint {
        return Err(bad_cursor("it belongs to another sortBy or sortOrder"));
    }
    Ok(Cursor {
        seq,
        key: v.get("k").cloned().unwrap_or(Value::Null),
    })
}

fn encode_cursor(
    last: &[Cell],
    sort: Option<&SortKey>,
    fingerprint: &str,
) -> Result<String, DirError> {
    // Columns: 5 stored columns, then seq, then the sort key.
    let seq = cell(last, 5)?
        .int()
        .ok_or_else(|| DirError::Store(StoreError::Read("cursor row: seq".into())))?;
    let key = match sort {
        None => Value::Null,
        Some(k) => {
            let c = cell(last, 6)?;
            match k.ty {
                SortTy::Text => c.text().map(Value::from),
                SortTy::Int => c.int().map(Value::from),
                SortTy::Real => c
                    .real()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number),
            }
            .unwrap_or(Value::Null)
        }
    };
    let v = json!({"s": seq, "k": key, "o": fingerprint});
    Ok(URL_SAFE_NO_PAD.encode(v.to_string()))
}

/// Rows strictly after the cursor in the page order.
fn keyset(
    b: &mut SqlBuilder,
    sort: Option<&SortKey>,
    descending: bool,
    c: &Cursor,
) -> Result<String, DirError> {
    let Some(k) = sort else {
        let s = b.arg(SqlValue::Int(c.seq));
        return Ok(format!("r.seq > {s}"));
    };
    let e = &k.expr;
    let key = match (&c.key, k.ty) {
        (Value::Null, _) => None,
        (Value::String(s), SortTy::Text) => Some(SqlValue::Text(s.clone())),
        (Value::Number(n), SortTy::Int) => Some(SqlValue::Int(
            n.as_i64().ok_or_else(|| bad_cursor("bad key"))?,
        )),
        (Value::Number(n), SortTy::Real) => Some(SqlValue::Real(
            n.as_f64().ok_or_else(|| bad_cursor("bad key"))?,
        )),
        _ => return Err(bad_cursor("bad key")),
    };
    let s = b.arg(SqlValue::Int(c.seq));
    Ok(match key {
        // Past the last non-NULL value: only NULL-keyed rows remain, in seq order.
        None => format!("({e} IS NULL AND r.seq > {s})"),
        Some(v) => {
            let p = b.arg(v);
            let cmp = if descending { "<" } else { ">" };
            format!("({e} IS NULL OR {e} {cmp} {p} OR ({e} = {p} AND r.seq > {s}))")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_cursors_are_invalid_not_errors() {
        for c in ["!!!", "e30", "eyJzIjoieCJ9", &"A".repeat(5000)] {
            match decode_cursor(c, "") {
                Err(DirError::Invalid(e)) => assert_eq!(e.status, 400),
                other => panic!("{c}: {:?}", other.map(|c| c.seq)),
            }
        }
        let ok = URL_SAFE_NO_PAD.encode(r#"{"s":5,"k":null,"o":""}"#);
        assert_eq!(decode_cursor(&ok, "").unwrap().seq, 5);
        assert!(decode_cursor(&ok, "username|a").is_err());
    }
}
