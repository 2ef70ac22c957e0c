//! `GET /api/v3/limits`: the limits a batch is held to on this node, so that a client (such as
//! `sluice send`) can split a large input into batches that fit instead of being refused.

use axum::Json;
use axum::extract::State;

use super::auth::Tenant;
use super::state::ApiState;
use crate::protocol::wire::LimitsResponse;

pub async fn get_limits(State(state): State<ApiState>, _tenant: Tenant) -> Json<LimitsResponse> {
    let config = &state.config;
    Json(LimitsResponse {
        max_items_per_batch: config.max_items,
        max_item_bytes: config.item_max_bytes,
        offload_threshold_bytes: config.offload_threshold_bytes,
        max_body_bytes: config.max_body_bytes,
        max_encoded_body_bytes: config.max_encoded_body_bytes,
    })
}
