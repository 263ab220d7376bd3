//! The users context: `POST /users` (register), `PATCH /users/{id}` (change profile).

use axum::extract::State;
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;
use serde::Deserialize;
use shop_model::domain::{UserCommand, UserState};
use tracing::field::{display, Empty};
use uuid::Uuid;

use crate::error::api_error;
use prism_commands::http::{respond, tracked, ApiError, ApiState, CommandHeaders, JsonBody, PathIds};

/// `POST /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    /// The new user's id; generated when absent.
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// Contact address.
    pub email: String,
    /// The name shown to others.
    pub display_name: String,
    /// Marketing consent; `false` when absent.
    #[serde(default)]
    pub marketing_opt_in: Option<bool>,
}

/// `PATCH /users/{id}`: absent fields stay as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeProfile {
    /// New address.
    #[serde(default)]
    pub email: Option<String>,
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New marketing preference.
    #[serde(default)]
    pub marketing_opt_in: Option<bool>,
}

/// The routes of this context.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/users", tracked("register_user", post(register)))
        .route("/users/{id}", tracked("change_user_profile", patch(change_profile)))
}

#[tracing::instrument(skip_all, fields(command = "register_user", user_id = Empty))]
async fn register(
    State(app): State<ApiState>,
    headers: CommandHeaders,
    body: JsonBody<RegisterUser>,
) -> Result<Response, ApiError> {
    let RegisterUser { user_id, email, display_name, marketing_opt_in } = body.value;
    let user_id = user_id.unwrap_or_else(Uuid::new_v4);
    tracing::Span::current().record("user_id", display(user_id));
    let command =
        UserCommand::Register { email, display_name, marketing_opt_in: marketing_opt_in.unwrap_or(false) };
    let reply = app
        .service
        .execute::<UserState>(user_id, command, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "change_user_profile", user_id = Empty))]
async fn change_profile(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<ChangeProfile>,
) -> Result<Response, ApiError> {
    let user_id = path.uuid("id")?;
    tracing::Span::current().record("user_id", display(user_id));
    let ChangeProfile { email, display_name, marketing_opt_in } = body.value;
    let command = UserCommand::ChangeProfile { email, display_name, marketing_opt_in };
    let reply = app
        .service
        .execute::<UserState>(user_id, command, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}
