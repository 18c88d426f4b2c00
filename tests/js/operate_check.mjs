// The web page's operator side in a real browser (Debian's Chromium, headless, through
// playwright-core): jobs with their progress, a model uploaded with a progress bar, a
// deployment made from the page's form.
//
// Usage: node tests/js/operate_check.mjs URL KEY JOB_ID MODEL_DIR SCREENSHOT_DIR
//
// Signs in, waits for JOB_ID in the jobs table as succeeded, uploads MODEL_DIR's
// config.yaml and 1/ files as model "uploaded", deploys it with one replica and waits
// for "1/1" ready. Prints one JSON line with what it saw. Run by the Rust test
// `ui::an_operator_uploads_and_deploys_a_model_and_follows_jobs_from_the_page`.

import fs from "node:fs";
import path from "node:path";
import { check } from "./browser.mjs";

const [url, key, jobId, modelDir, shots] = process.argv.slice(2);

await check(async (page, seen) => {
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(url);
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  await page.fill("#key", key);
  await page.press("#key", "Enter");
  const job = page.locator(`#jobs tr[data-job="${jobId}"]`);
  await job.locator(".job-SUCCEEDED").waitFor({ timeout: 30000 });
  seen.job = await job.textContent();
  seen.jobProgress = await job.locator("progress").evaluate((p) => [p.value, p.max]);

  await page.fill("#upload-name", "uploaded");
  const files = fs.readdirSync(path.join(modelDir, "1")).map((f) => path.join(modelDir, "1", f));
  await page.setInputFiles("#upload-files", files);
  await page.setInputFiles("#upload-config", path.join(modelDir, "config.yaml"));
  await page.click("#upload-button");
  await page.locator("#upload-status[data-pushed]").waitFor({ timeout: 60000 });
  seen.upload = await page.locator("#upload-status").textContent();
  seen.uploadProgress = await page.locator("#upload-progress").evaluate((p) => [p.value, p.max]);
  const listed = page.locator('#catalog tr[data-version="uploaded:1"]');
  await listed.waitFor({ timeout: 15000 });
  seen.catalog = await listed.textContent();

  await page.fill("#deploy-name", "uploaded");
  await page.fill("#deploy-model", "uploaded");
  await page.fill("#deploy-replicas", "1");
  await page.click('#deploy-form button[type="submit"]');
  const row = page.locator('#deployments tr[data-deployment="uploaded"] td.ready', { hasText: "1/1" });
  await row.waitFor({ timeout: 60000 });
  seen.deployed = await page.locator('#deployments tr[data-deployment="uploaded"]').textContent();
  await page.screenshot({ path: path.join(shots, "operate-desktop.png"), fullPage: true });

  // Where events cannot be opened the page polls; and a worker's GPU shows as a bar. This
  // machine has no GPU: the page's worker list gets one added on its way (a test double
  // for the GPU only; the real worker report carries NVML's figures in the same fields).
  await page.route("**/api/v1/events/ticket", (route) => route.fulfill({ status: 404, contentType: "application/json", body: '{"error": "no events here"}' }));
  await page.route("**/api/v1/workers", async (route) => {
    const answer = await route.fetch();
    const body = await answer.json();
    body.workers[0].gpus = [{ name: "NVIDIA GeForce RTX 3060", memory_total_bytes: 12 * 2 ** 30, memory_free_bytes: 9 * 2 ** 30 }];
    await route.fulfill({ response: answer, json: body });
  });
  await page.reload();
  await page.locator('#updated[data-how="polling"]').waitFor({ state: "attached", timeout: 15000 });
  const gpu = page.locator("#workers tbody tr").first().locator("td.gpu");
  await gpu.locator(".bar").waitFor({ timeout: 15000 });
  seen.gpu = [await gpu.locator(".bar").getAttribute("title"), await gpu.textContent()];
  // The 401 before signing in, and the 404 of the events ticket made above: expected.
}, (text) => text.includes("status of 401") || text.includes("status of 404"));
