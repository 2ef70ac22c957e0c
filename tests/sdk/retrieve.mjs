// Reads a batch with trigger.dev's SDK (`batch.retrieve`, which calls GET /api/v2/batches/{id} and
// validates the answer strictly), configured from TRIGGER_API_URL and TRIGGER_SECRET_KEY.
// Prints the SDK's result as JSON, or the error's name, status and message on failure (exit 1).
import { batch } from "@trigger.dev/sdk";

try {
  const result = await batch.retrieve(process.argv[2]);
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ error: error.name, status: error.status ?? null, message: String(error.message) }));
  process.exit(1);
}
