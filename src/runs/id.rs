//! Run ids: `run_` + the batch id's random part + the index in 8 hex digits. Clients treat them as
//! opaque; the server derives one from `(batch, index)` and back, so a run keeps its id however
//! often its chunk is written (a crash and a retry write the same id) and the store keeps no
//! second unique index for it.

const RUN_PREFIX: &str = "run_";
const BATCH_PREFIX: &str = "batch_";
const INDEX_DIGITS: usize = 8;

pub fn run_id(batch_id: &str, index: u32) -> String {
    let batch = batch_id.strip_prefix(BATCH_PREFIX).unwrap_or(batch_id);
    format!("{RUN_PREFIX}{batch}{index:08x}")
}

/// The batch id and index of a run id; `None` for a string no run id can be.
pub fn parse_run_id(id: &str) -> Option<(String, u32)> {
    let rest = id.strip_prefix(RUN_PREFIX)?;
    if rest.len() <= INDEX_DIGITS || !rest.is_ascii() {
        return None;
    }
    let (batch, index) = rest.split_at(rest.len() - INDEX_DIGITS);
    let index = u32::from_str_radix(index, 16).ok()?;
    let batch_id = format!("{BATCH_PREFIX}{batch}");
    // Only the one spelling the server gives out (lowercase hex) names the run.
    (run_id(&batch_id, index) == id).then_some((batch_id, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_name_their_batch_and_index_and_nothing_else() {
        let batch = "batch_3f9c2a7d1e8b4c6f0a5d9e2b7c1f4a8e";
        let id = run_id(batch, 4_242);
        assert_eq!(id, "run_3f9c2a7d1e8b4c6f0a5d9e2b7c1f4a8e00001092");
        assert_eq!(parse_run_id(&id), Some((batch.to_owned(), 4_242)));
        assert_eq!(
            parse_run_id(&run_id(batch, u32::MAX)),
            Some((batch.to_owned(), u32::MAX))
        );
        for bad in [
            "",
            "run_",
            "run_00000001",
            "run_3f9c00001092".to_uppercase().as_str(),
            "run_3f9c0000109G",
            "run_3f9c+0001092",
            "batch_3f9c00001092",
            "run_é00000001",
        ] {
            assert_eq!(parse_run_id(bad), None, "{bad}");
        }
    }
}
