// A stand-in for Airwallex.js embedded components, served by the fake
// Airwallex (awx_connection.testing) at /components/sdk/v1/index.js, the
// path Airwallex's CDN uses. It is no copy of Airwallex.js: it exposes the
// same entry points (window.AirwallexComponentsSDK.init and createElement)
// so a partner page can be written once, runs the real protocol's checks
// against the fake (the code is single-use, lives 30 seconds, and only the
// verifier whose S256 hash was sent may redeem it), and renders a small KYC
// form whose submit makes the fake announce account.active.
(() => {
  "use strict";
  const ORIGIN = new URL(document.currentScript.src).origin;
  let session = null;

  class SdkError extends Error {
    constructor(code, message) {
      super(message);
      this.name = "AirwallexComponentsError";
      this.code = code;
    }
  }

  async function post(path, body) {
    let response;
    try {
      response = await fetch(ORIGIN + path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (error) {
      throw new SdkError("NETWORK_ERROR", "Airwallex could not be reached: " + error.message);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new SdkError(data.code || "INIT_ERROR", data.message || "HTTP " + response.status);
    }
    return data;
  }

  // init({authCode, clientId, codeVerifier, env, enabledElements, locale})
  async function init(options) {
    const { authCode, clientId, codeVerifier } = options || {};
    if (!authCode || !clientId || !codeVerifier) {
      throw new SdkError(
        "UNAUTHORIZED",
        "Cannot authenticate: missing credentials. Please call init() with authCode, " +
          "clientId, and codeVerifier.",
      );
    }
    const granted = await post("/components/v1/token", { authCode, clientId, codeVerifier });
    session = { ...granted, enabledElements: options.enabledElements || [] };
    return { accountId: granted.account_id };
  }

  function field(form, label, name, attributes) {
    const wrapper = document.createElement("label");
    wrapper.className = "awx-field";
    wrapper.append(label);
    const input = document.createElement("input");
    input.name = name;
    input.required = true;
    for (const [key, value] of Object.entries(attributes)) input.setAttribute(key, value);
    wrapper.append(input);
    form.append(wrapper);
    return input;
  }

  class KycElement {
    constructor(options) {
      this.options = options || {};
      this.handlers = {};
      this.container = null;
    }

    on(event, handler) {
      (this.handlers[event] ||= []).push(handler);
      return this;
    }

    emit(event, detail) {
      for (const handler of this.handlers[event] || []) handler(detail);
    }

    mount(target) {
      const container = typeof target === "string" ? document.getElementById(target) : target;
      if (!container) throw new SdkError("INIT_ERROR", "mount() target not found");
      this.container = container;
      const form = document.createElement("form");
      form.className = "awx-kyc";
      form.setAttribute("aria-label", "Airwallex verification");
      const heading = document.createElement("h3");
      heading.textContent = "Verify " + session.business_name;
      form.append(heading);
      const legal = field(form, "Legal business name", "legal_name", { maxlength: "200" });
      legal.value = session.business_name;
      field(form, "Country (ISO code)", "country_code", { maxlength: "2", placeholder: "AU" });
      const status = document.createElement("p");
      status.className = "awx-status";
      status.setAttribute("role", "status");
      const submit = document.createElement("button");
      submit.type = "submit";
      submit.textContent = "Submit verification";
      form.append(submit, status);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        submit.disabled = true;
        status.textContent = "Submitting\u2026";
        const data = new FormData(form);
        try {
          const result = await post("/components/v1/kyc", {
            session: session.session,
            legal_name: data.get("legal_name"),
            country_code: data.get("country_code"),
          });
          const done = document.createElement("p");
          done.className = "awx-done";
          done.setAttribute("role", "status");
          done.textContent = "Verification submitted for " + result.account_id + ".";
          form.replaceWith(done);
          this.emit("success", { accountId: result.account_id, status: result.status });
        } catch (error) {
          submit.disabled = false;
          status.textContent = error.message;
          this.emit("error", { code: error.code, message: error.message });
        }
      });
      container.replaceChildren(form);
      this.emit("ready", {});
      return this;
    }

    unmount() {
      if (this.container) this.container.replaceChildren();
    }
  }

  async function createElement(name, options) {
    if (session === null) {
      throw new SdkError(
        "UNAUTHORIZED",
        "Cannot authenticate " + name + ": missing credentials. Please call init() first.",
      );
    }
    if (name !== "kyc") {
      throw new SdkError("INIT_ERROR", "the fake's stand-in renders only the 'kyc' element");
    }
    if (!session.scopes.includes("onboarding:write")) {
      throw new SdkError("UNAUTHORIZED", "the code was not issued for onboarding:write");
    }
    return new KycElement(options);
  }

  window.AirwallexComponentsSDK = { init, createElement };
})();
