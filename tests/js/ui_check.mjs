// Drives the scheduler's web page in a real browser: Debian's Chromium, headless, through
// playwright-core (scripts/deps.sh --test installs both; no browser download).
//
// Usage: node tests/js/ui_check.mjs URL KEY BATTERY_WORKER CORDON_WORKER SCREENSHOT_DIR
//
// Signs in with KEY, waits for the workers table to list BATTERY_WORKER on battery,
// runs image_classifier with random input from the "Try" form and reads its outputs,
// cordons CORDON_WORKER with the keyboard, and saves screenshots at phone and desktop
// sizes. Prints one JSON line with what it saw; exits non-zero on any failure. Run by
// the Rust test `ui::the_web_page_shows_the_cluster_runs_a_model_and_cordons`.

import path from "node:path";
import { check } from "./browser.mjs";

const [url, key, batteryWorker, cordonWorker, shots] = process.argv.slice(2);
// The API answers 401 until the page has a key: expected, not an error of the page.
await check(async (page, seen) => {
  await page.goto(url);
  // Keys are required: the page asks for one.
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  await page.fill("#key", key);
  await page.press("#key", "Enter");
  const battery = page.locator(`#workers tr[data-worker="${batteryWorker}"] .battery`);
  await battery.waitFor({ timeout: 30000 });
  seen.battery = await battery.textContent();
  seen.workers = await page.locator("#workers tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.worker));
  await page.screenshot({ path: path.join(shots, "cluster-phone.png"), fullPage: true });

  // Try a model.
  await page.locator('#models tr[data-model="image_classifier:1"] button').click();
  await page.click("#try-random");
  await page.click("#try-run");
  const output = page.locator('#try-outputs [data-output="probabilities"]');
  await output.waitFor({ timeout: 30000 });
  seen.output = await output.textContent();
  seen.servedBy = await page.locator("#try-outputs > p").first().textContent();
  // The run shows in the model's latency percentiles at the next refresh.
  const p50 = page.locator('#models tr[data-model="image_classifier:1"] td.latency').first();
  await page.waitForFunction(
    () => document.querySelector('#models tr[data-model="image_classifier:1"] td.latency')?.textContent.endsWith("ms"),
    null, { timeout: 15000 });
  seen.p50 = await p50.textContent();
  // The same update shows the worker that served it answering requests (its rate).
  const served = seen.servedBy.replace("served by ", "");
  await page.waitForFunction((name) => {
    const text = document.querySelector(`#workers tr[data-worker="${name}"] td.rate`)?.textContent || "";
    return /^[0-9.]+\/s$/.test(text) && parseFloat(text) > 0;
  }, served, { timeout: 15000 });
  seen.rate = await page.locator(`#workers tr[data-worker="${served}"] td.rate`).textContent();
  await page.screenshot({ path: path.join(shots, "try-phone.png"), fullPage: true });

  // Cordon with the keyboard alone: focus the button, press Enter.
  const cordon = page.locator(`#workers tr[data-worker="${cordonWorker}"] button`).first();
  await cordon.focus();
  await page.keyboard.press("Enter");
  await page.locator(`#workers tr[data-worker="${cordonWorker}"] td:nth-child(2)`, { hasText: "cordoned" }).waitFor({ timeout: 15000 });
  seen.cordoned = cordonWorker;

  // Drain the laptop: cordoned, then "drained" once nothing runs there.
  await page.locator(`#workers tr[data-worker="${batteryWorker}"] button`, { hasText: "Drain" }).click();
  const drained = page.locator(`#workers tr[data-worker="${batteryWorker}"] td:nth-child(2)`, { hasText: "drained" });
  await drained.waitFor({ timeout: 15000 });
  seen.drained = await drained.textContent();

  await page.setViewportSize({ width: 1280, height: 800 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(shots, "cluster-desktop.png"), fullPage: true });
}, (text) => text.includes("status of 401"));
