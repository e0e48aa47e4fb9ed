from shared.run import serve

serve("services.dispatch.app:create_app")
