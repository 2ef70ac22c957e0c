//! Rows in Postgres' binary `COPY` format (`COPY … FROM STDIN (FORMAT binary)`): a header, then per
//! row its field count and each field as a length (-1 for NULL) and its bytes in the column type's
//! binary form, then a trailer. Only the types the run store writes: `text`, `bytea`, `int4`,
//! `int8`.

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The bytes of a `COPY` stream, sent in pieces: [`BinaryRows::sent`] empties the buffer once its
/// bytes are sent, so a stream of any length is written through one buffer of about a piece.
pub(super) struct BinaryRows {
    buf: Vec<u8>,
}

impl BinaryRows {
    /// A stream whose pieces are sent at about `piece` bytes; the header is its first bytes.
    pub fn with_capacity(piece: usize) -> Self {
        let mut buf = Vec::with_capacity(piece);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        Self { buf }
    }

    /// The bytes not sent yet.
    pub fn unsent(&self) -> &[u8] {
        &self.buf
    }

    /// The unsent bytes were sent.
    pub fn sent(&mut self) {
        self.buf.clear();
    }

    /// The stream's last bytes, after its last row.
    pub fn end(&mut self) {
        self.buf.extend_from_slice(&(-1_i16).to_be_bytes());
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    /// A `text` or `bytea` field.
    pub fn bytes(&mut self, value: Option<&[u8]>) -> &mut Self {
        match value {
            Some(bytes) => {
                self.buf
                    .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                self.buf.extend_from_slice(bytes);
            }
            None => self.buf.extend_from_slice(&(-1_i32).to_be_bytes()),
        }
        self
    }

    pub fn text(&mut self, value: Option<&str>) -> &mut Self {
        self.bytes(value.map(str::as_bytes))
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.buf.extend_from_slice(&4_i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn int8(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => {
                self.buf.extend_from_slice(&8_i32.to_be_bytes());
                self.buf.extend_from_slice(&value.to_be_bytes());
            }
            None => self.buf.extend_from_slice(&(-1_i32).to_be_bytes()),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::BinaryRows;

    #[test]
    fn a_row_is_its_field_count_then_each_field_as_length_and_bytes() {
        let mut rows = BinaryRows::with_capacity(0);
        rows.row(4)
            .text(Some("ab"))
            .bytes(None)
            .int4(7)
            .int8(Some(-2));
        rows.end();
        let bytes = rows.unsent().to_vec();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b']);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 7]);
        want.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, want);
        rows.sent();
        assert!(rows.unsent().is_empty());
    }
}
