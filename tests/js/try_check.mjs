// The web page's "Try" inputs in a real browser (Debian's Chromium, headless, through
// playwright-core): a photo for image_scorer (its config.yaml has a `task:`) and a .npy
// file for text_classifier v2.
//
// Usage: node tests/js/try_check.mjs URL KEY PHOTO NPY SCREENSHOT_DIR
//
// Signs in, waits for live updates (server-sent events), opens image_scorer's Try form,
// picks PHOTO as the photo, runs it and records the request the page sent (the tensor)
// and the answer it showed; then picks NPY for text_classifier v2's input and runs it.
// Prints one JSON line with what it saw; the Rust test
// `ui::a_photo_and_a_npy_file_become_the_models_inputs` checks it against Python.

import path from "node:path";
import { check } from "./browser.mjs";

const [url, key, photo, npy, shots] = process.argv.slice(2);

// Runs the open Try form and returns the request body the page sent and the answer.
async function runTry(page) {
  const request = page.waitForRequest((r) => r.method() === "POST" && r.url().endsWith("/infer"));
  const response = page.waitForResponse((r) => r.request().method() === "POST" && r.url().endsWith("/infer"));
  await page.click("#try-run");
  return { request: (await request).postDataJSON(), response: await (await response).json() };
}

await check(async (page, seen) => {
  await page.goto(url);
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  await page.fill("#key", key);
  await page.press("#key", "Enter");
  await page.locator('#updated[data-how="live"]').waitFor({ state: "attached", timeout: 30000 });
  seen.live = await page.locator("#updated").textContent();

  await page.locator('#models tr[data-model="image_scorer:1"] button').click({ timeout: 30000 });
  await page.locator("#try-photo-row:not([hidden])").waitFor({ timeout: 15000 });
  seen.hint = await page.locator("#try-photo-hint").textContent();
  await page.setInputFiles("#try-photo", photo);
  await page.locator("#try-photo-preview canvas").waitFor({ timeout: 15000 });
  seen.photo = await runTry(page);
  const scores = page.locator('#try-outputs [data-output="scores"]');
  await scores.waitFor({ timeout: 30000 });
  seen.photo.top = await scores.getAttribute("data-top");
  seen.photo.shown = await scores.textContent();
  await page.screenshot({ path: path.join(shots, "photo-phone.png"), fullPage: true });

  await page.locator('#models tr[data-model="text_classifier:2"] button').click();
  await page.setInputFiles("#file-token_ids", npy);
  await page.waitForFunction(() => document.getElementById("shape-token_ids")?.value === "[2,16]", null, { timeout: 15000 });
  seen.npy = await runTry(page);

  // The same inputs from a JSON file (a nested array), into a fresh form.
  await page.locator('#models tr[data-model="text_classifier:2"] button').click();
  await page.waitForFunction(() => document.getElementById("shape-token_ids")?.value === "[1,16]", null, { timeout: 15000 });
  await page.setInputFiles("#file-token_ids", npy.replace(/\.npy$/, ".json"));
  await page.waitForFunction(() => document.getElementById("shape-token_ids")?.value === "[2,16]", null, { timeout: 15000 });
  seen.json = await runTry(page);
}, (text) => text.includes("status of 401"));
