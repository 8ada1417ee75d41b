// Starts the vendored Swagger UI on /docs with the app's OpenAPI document (named by the page).
// No validator badge: it would load an image from another host.
window.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var holder = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: holder.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    showExtensions: true,
    showCommonExtensions: true,
  });
});
