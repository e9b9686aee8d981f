//! API errors: JSON `{"id": CODE, "message": LINE}` with a stable code,
//! and the same one-line message the SSH command gives (Heroku's error
//! shape).

use hyper::{header, Response, StatusCode};

use super::body;
use crate::proxy::ControlBody;
use crate::service::{tokens::AuthError, ServiceError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub id: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// The methods a 405's resource takes.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            id,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
    }

    /// The router fills in `allow` from the path (`v1::allow_for`).
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        )
    }

    pub fn with_allow(mut self, allow: &'static str) -> ApiError {
        self.message = format!("this resource takes {allow}");
        self.allow = Some(allow);
        self
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn unauthorized(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }

    pub fn rate_limited(wait_secs: u64) -> ApiError {
        ApiError {
            retry_after: Some(wait_secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests: try again in {}s", wait_secs.max(1)),
            )
        }
    }

    pub fn into_response(self) -> Response<ControlBody> {
        let mut resp = body::json(
            self.status,
            &serde_json::json!({ "id": self.id, "message": self.message }),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"cygni\""),
            );
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::AppNotFound(_) | ServiceError::NotFound(_) => {
                ApiError::not_found(message)
            }
            ServiceError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            ServiceError::Invalid(_) | ServiceError::Name(_) => ApiError::invalid(message),
            ServiceError::Deploy(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "deploy_failed", message)
            }
            ServiceError::Internal(_) => ApiError::internal(message),
        }
    }
}
