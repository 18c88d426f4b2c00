// The scheduler's web page for a visitor without a key where an operator opened models to
// everyone (an anonymous key, a kiosk): Debian's Chromium, headless, through
// playwright-core.
//
// Usage: node tests/js/kiosk_check.mjs URL MODEL SCREENSHOT_DIR
//
// Opens the page with no key, reads the notice of what is open, runs MODEL with random
// input from its "Try" form and reads its first output. Prints one JSON line with what it
// saw; exits non-zero on any failure. Run by the Rust test
// `ui::a_visitor_without_a_key_runs_the_models_open_to_everyone`.

import path from "node:path";
import { check } from "./browser.mjs";

const [url, model, shots] = process.argv.slice(2);
await check(async (page, seen) => {
  await page.goto(url);
  const notice = page.locator("#open-access:not([hidden])");
  await notice.waitFor({ timeout: 15000 });
  seen.notice = await notice.textContent();
  await page.locator(`#open-list li[data-model="${model}"] button`).click({ timeout: 15000 });
  await page.click("#try-random");
  await page.click("#try-run");
  const output = page.locator("#try-outputs [data-output]").first();
  await output.waitFor({ timeout: 30000 });
  seen.output = await output.textContent();
  seen.signInShown = await page.locator("#signin").isVisible();
  seen.clusterShown = await page.locator("#cluster").isVisible();
  await page.screenshot({ path: path.join(shots, "kiosk-phone.png"), fullPage: true });
});
