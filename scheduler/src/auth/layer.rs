//! The tower layer that authenticates every gRPC call: with a token table it answers a call
//! without a valid token, or with the wrong role, itself (UNAUTHENTICATED or
//! PERMISSION_DENIED) and hands the rest on with the caller's [`Identity`] in the request's
//! extensions; without one (authentication off) it hands everything on.

use super::{check, Identity, Tokens};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Authenticates calls against a token table (`None`: authentication is off).
#[derive(Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match check(tokens, req.uri().path(), header) {
                Ok(Some(identity)) => {
                    req.extensions_mut().insert::<Identity>(identity);
                }
                Ok(None) => {}
                Err(status) => {
                    let response = status.into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}
