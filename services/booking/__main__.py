from shared.run import serve

serve("services.booking.app:create_app")
