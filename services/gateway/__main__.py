from shared.run import serve

serve("services.gateway.app:create_app")
