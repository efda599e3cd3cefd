//! Who may read `/metrics`: the caller's bearer token is authenticated by the API server
//! (TokenReview) and the user it names must be allowed `get` on the non-resource URL `/metrics`
//! (SubjectAccessReview), as the API server would decide for its own `/metrics`. Verdicts are
//! cached for a minute, so a scrape every few seconds costs two API calls a minute. The token is
//! never logged, and only its verdict is kept.

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{api::PostParams, Api, Client};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The answer for one bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// The API server did not authenticate the token (or none was sent): 401.
    Unauthenticated,
    /// Authenticated as this user, who may not `get /metrics`: 403.
    Forbidden(String),
}

/// The narrow edge the metrics endpoint needs: a verdict for a token.
pub trait Reviewer: Send + Sync + 'static {
    fn review(&self, token: &str) -> impl std::future::Future<Output = Result<Access, String>> + Send;
}

/// TokenReview + SubjectAccessReview against the API server.
pub struct KubeReviewer {
    pub client: Client,
}

impl Reviewer for KubeReviewer {
    async fn review(&self, token: &str) -> Result<Access, String> {
        let tr = TokenReview { spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None }, ..Default::default() };
        let tr = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &tr)
            .await
            .map_err(|e| format!("TokenReview: {e}"))?;
        let Some(status) = tr.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Access::Unauthenticated);
        };
        let user = status.user.unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                non_resource_attributes: Some(NonResourceAttributes { path: Some("/metrics".into()), verb: Some("get".into()) }),
                ..Default::default()
            },
            ..Default::default()
        };
        let sar = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        let name = user.username.unwrap_or_default();
        Ok(if sar.status.is_some_and(|s| s.allowed) { Access::Allowed } else { Access::Forbidden(name) })
    }
}

/// Verdicts by token, for `ttl`; bounded (cleared when full).
pub struct Gate<R> {
    reviewer: R,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Access, Instant)>>,
}

const MAX_CACHED: usize = 256;

impl<R: Reviewer> Gate<R> {
    pub fn new(reviewer: R, ttl: Duration) -> Gate<R> {
        Gate { reviewer, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// The verdict for an `Authorization` header value (`Bearer <token>`), if any.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Access, String> {
        let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Access::Unauthenticated);
        };
        if let Some((a, at)) = self.cache.lock().unwrap().get(token) {
            if at.elapsed() < self.ttl {
                return Ok(a.clone());
            }
        }
        let a = self.reviewer.review(token).await?;
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(token.to_string(), (a.clone(), Instant::now()));
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    struct Fixed(Arc<AtomicUsize>);

    impl Reviewer for Fixed {
        async fn review(&self, token: &str) -> Result<Access, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(match token {
                "reader" => Access::Allowed,
                "someone" => Access::Forbidden("someone".into()),
                _ => Access::Unauthenticated,
            })
        }
    }

    #[tokio::test]
    async fn a_token_is_reviewed_once_per_ttl_and_no_token_is_never_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Gate::new(Fixed(calls.clone()), Duration::from_secs(60));
        assert_eq!(gate.check(None).await.unwrap(), Access::Unauthenticated);
        assert_eq!(gate.check(Some("Basic abc")).await.unwrap(), Access::Unauthenticated);
        assert_eq!(gate.check(Some("Bearer ")).await.unwrap(), Access::Unauthenticated);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(gate.check(Some("Bearer reader")).await.unwrap(), Access::Allowed);
        assert_eq!(gate.check(Some("Bearer reader")).await.unwrap(), Access::Allowed);
        assert_eq!(gate.check(Some("Bearer someone")).await.unwrap(), Access::Forbidden("someone".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let gate = Gate::new(Fixed(calls.clone()), Duration::ZERO);
        gate.check(Some("Bearer reader")).await.unwrap();
        gate.check(Some("Bearer reader")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "expired verdicts are asked again");
    }
}
