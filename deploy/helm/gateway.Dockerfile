# The course's gateway (chapter 05) as an image for the chart (gateway.enabled: true). vLLM's own
# image already has everything the gateway imports (fastapi, uvicorn, aiohttp, uvloop, httpx,
# prometheus_client, pydantic); the course's src/ is added on top. From the repository's root:
#   docker build -f deploy/helm/gateway.Dockerfile -t REGISTRY/vllm-hands-on-gateway:1 .
#   docker push REGISTRY/vllm-hands-on-gateway:1      # then gateway.image in your values file
FROM vllm/vllm-openai:v0.32.0
COPY src /course/src
ENV PYTHONPATH=/course/src PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT []
CMD ["python3", "-m", "helpers.gateway", "--help"]
