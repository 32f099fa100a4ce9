//! The read API (`http.api_listen`): users, messages and a user's messages, for the sending
//! application and its support staff. Every call but the OpenAPI document needs
//! `Authorization: Bearer <key>` with a key of `http.api_keys_env`. Answers are JSON; errors
//! are `{"error": "<what>"}`.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde_json::json;

use crate::domain::feed::message_json;
use crate::ports::{MessagesAfter, ReadStore, StoreError};

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Most messages a page holds, and how many when `limit` is not given.
pub const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;

pub struct ApiState {
    pub reads: Arc<dyn ReadStore>,
    pub keys: HashSet<String>,
}

/// Serves in the current actix system until the returned server is stopped.
pub fn start(
    state: ApiState,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .service(get_only("/v1/openapi.json").route(web::get().to(openapi)))
            .service(get_only("/v1/users/{id}/messages").route(web::get().to(user_messages)))
            .service(get_only("/v1/users/{id}").route(web::get().to(user)))
            .service(get_only("/v1/messages/{id}").route(web::get().to(message)))
            .default_service(web::to(|| async { error(404, "no such resource") }))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

/// A resource that answers other methods than GET with 405 and `Allow: GET`.
fn get_only(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        let mut answer = error(405, "only GET is allowed here");
        answer
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        answer
    }))
}

fn error(code: u16, what: &str) -> HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(code).unwrap_or(actix_web::http::StatusCode::OK);
    let mut answer = HttpResponse::build(status);
    match code {
        401 => {
            answer.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        503 => {
            answer.insert_header((header::RETRY_AFTER, "1"));
        }
        _ => {}
    }
    answer.json(json!({ "error": what }))
}

fn unavailable(e: StoreError) -> HttpResponse {
    tracing::warn!(error = %e, "read API: the store did not answer");
    error(503, "the store is not available; try again")
}

/// `None` if the request carries one of the keys; else the 401 to answer.
fn refused(state: &ApiState, req: &HttpRequest) -> Option<HttpResponse> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
    match given {
        Some(key) if state.keys.contains(key) => None,
        Some(_) => Some(error(401, "the key is not valid")),
        None => Some(error(401, "Authorization: Bearer <key> is required")),
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn user(state: web::Data<ApiState>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if let Some(answer) = refused(&state, &req) {
        return answer;
    }
    match state.reads.user(id.into_inner()).await {
        Ok(Some(doc)) => HttpResponse::Ok().json(doc),
        Ok(None) => error(404, "no such user"),
        Err(e) => unavailable(e),
    }
}

async fn message(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Some(answer) = refused(&state, &req) {
        return answer;
    }
    match state.reads.message(id.into_inner()).await {
        Ok(Some(m)) => HttpResponse::Ok().json(message_json(&m)),
        Ok(None) => error(404, "no such message"),
        Err(e) => unavailable(e),
    }
}

/// `?limit=` and `?cursor=` of a page request.
#[derive(Debug, PartialEq)]
struct Page {
    limit: usize,
    after: Option<MessagesAfter>,
}

fn parse_page(query: &str) -> Result<Page, String> {
    let mut page = Page {
        limit: DEFAULT_LIMIT,
        after: None,
    };
    for (k, v) in form_urlencoded(query) {
        match k.as_str() {
            "limit" => {
                page.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_LIMIT}"))?;
            }
            "cursor" => {
                page.after = Some(decode_cursor(&v).ok_or("the cursor is not one this API gave")?)
            }
            _ => {}
        }
    }
    Ok(page)
}

/// The pairs of a query string, percent-decoded (`+` as a space).
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_decode(&s)
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cursor: the last message of a page, as `<created_at ms>:<id>` in URL-safe base64.
fn encode_cursor(after: &MessagesAfter) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", after.created_at, after.id))
}

fn decode_cursor(cursor: &str) -> Option<MessagesAfter> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (at, id) = text.split_once(':')?;
    Some(MessagesAfter {
        created_at: at.parse().ok()?,
        id: id.to_string(),
    })
}

async fn user_messages(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Some(answer) = refused(&state, &req) {
        return answer;
    }
    let page = match parse_page(req.query_string()) {
        Ok(p) => p,
        Err(what) => return error(400, &what),
    };
    let id = id.into_inner();
    match state.reads.user(id.clone()).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(404, "no such user"),
        Err(e) => return unavailable(e),
    }
    // One more than asked: whether there is a next page.
    let found = match state
        .reads
        .user_messages(id, page.limit + 1, page.after)
        .await
    {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    let more = found.len() > page.limit;
    let shown = &found[..found.len().min(page.limit)];
    let next = shown.last().filter(|_| more).map(|m| {
        encode_cursor(&MessagesAfter {
            created_at: m.created_at,
            id: m.id.clone(),
        })
    });
    HttpResponse::Ok().json(json!({
        "messages": shown.iter().map(message_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_and_cursors_round_trip() {
        assert_eq!(parse_page("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(parse_page("limit=100").unwrap().limit, 100);
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limit=-1",
            "cursor=%%",
            "cursor=abc",
        ] {
            assert!(parse_page(bad).is_err(), "{bad}");
        }
        let after = MessagesAfter {
            created_at: 1_700_000_000_123,
            id: "welcome:u-1:x".into(),
        };
        let page = parse_page(&format!("limit=5&cursor={}", encode_cursor(&after))).unwrap();
        assert_eq!(page.after, Some(after));
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
    }
}
