// Drives the dashboard in headless Chromium: enters the API key, waits for the batch's row,
// prints `ready`, then samples the batch's "completed" bar until the batch is final, opens its
// failed runs, takes a screenshot, and prints what it saw as one line of JSON.
//
// node dashboard.mjs <base url> <api key> <batch id> <screenshot path>
// CHROMIUM names the browser (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const [base, key, batch, screenshot] = process.argv.slice(2);
const FINAL = ["COMPLETED", "PARTIAL_FAILED", "ABORTED", "CANCELED"];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
const result = { widths: [], statuses: [], consoleErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 520 } });
  page.on("console", (message) => {
    if (message.type() === "error") result.consoleErrors.push(message.text());
  });
  await page.goto(base + "/");
  await page.fill("#key", key);
  await page.click("#key-form button[type=submit]");
  const row = page.locator(`tr.batch[data-id="${batch}"]`);
  await row.waitFor({ timeout: 15000 });
  result.listed = true;
  result.keyKept = await page.evaluate(() => sessionStorage.getItem("sluiceKey") !== null);
  console.log("ready");

  const deadline = Date.now() + 60000;
  for (;;) {
    const sample = await row.evaluate((tr) => ({
      width: parseFloat(tr.querySelector(".bar.completed > span").style.width) || 0,
      status: tr.querySelector(".status").textContent,
    }));
    if (result.widths.at(-1) !== sample.width) result.widths.push(sample.width);
    if (result.statuses.at(-1) !== sample.status) result.statuses.push(sample.status);
    if (FINAL.includes(sample.status) || Date.now() > deadline) break;
    await page.waitForTimeout(50);
  }
  await row.click();
  const error = page.locator("#failed td.error").first();
  await error.waitFor({ timeout: 10000 });
  result.failedError = await error.textContent();
  result.failedRows = await page.locator("#failed tbody tr").count();
  // Let the bars' transition end before the picture.
  await page.waitForTimeout(400);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (error) {
  result.error = String(error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
