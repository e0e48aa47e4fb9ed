from shared.run import serve

serve("services.payments.app:create_app")
